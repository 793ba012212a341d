"""Judge the features of a trained SAE: ``python analyze.py [sae_path=PATH] [overrides]``.

Configuration: conf/analyze.yaml (Hydra). Loads the SAE (default: the latest run under
outputs/), the frozen model named in its metadata and ``tokens=`` held-out tokens, runs the
selected criteria (``criteria=[specificity,not_a_neuron]``) over one streaming pass and
writes outputs/analysis/<date>/<time>/report/criteria.json, TensorBoard events and a
scorecard in the log. Examples::

    python analyze.py sae_path=outputs/2026-01-01/12-00-00 features=top:50 tokens=100000
    python analyze.py sae_path=a/sae compare_with=b/sae "criteria=[top_activations,universality]"
    python analyze.py trainer=ddp trainer.accelerator=cpu trainer.devices=2
    python analyze.py sae_path=hf://NeelNanda/sparse_autoencoder/25.pt model=gelu-1l

A mistake the user can fix (a missing file, a bad value, an SAE on the hub that is neither
cached nor reachable) ends with its one-line message and exit status 1; HYDRA_FULL_ERROR=1
shows the traceback.
"""

import hydra
from omegaconf import DictConfig

from sae_lightning.analysis.run import analyze
from sae_lightning.cli import user_errors
from sae_lightning.console import quiet_known_noise


@hydra.main(version_base="1.3", config_path="conf", config_name="analyze")
def main(cfg: DictConfig) -> float | None:
    quiet_known_noise()
    with user_errors("analyze.py"):
        report = analyze(cfg)
    rates = [s["pass_rate"] for s in report.summaries.values() if "pass_rate" in s]
    return sum(rates) / len(rates) if rates else None


if __name__ == "__main__":
    main()
