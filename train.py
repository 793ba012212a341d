"""Train a sparse autoencoder on live activations: ``python train.py [overrides]``.

Configuration: conf/train.yaml (Hydra). Outputs: outputs/<date>/<time>/ (TensorBoard events,
checkpoints, the exported SAE in sae/, metrics.json). ``-m`` sweeps into multirun/.

A mistake the user can fix (a bad hook, a missing or malformed data file, an unreachable
hub, a diverging run) ends with its one-line message and exit status 1; HYDRA_FULL_ERROR=1
shows the traceback. SIGTERM or Ctrl-C saves a resumable checkpoints/last.ckpt, prints the
command that resumes it and exits with 143 / 130.
"""

import hydra
from omegaconf import DictConfig

from sae_lightning.cli import user_errors
from sae_lightning.console import quiet_known_noise
from sae_lightning.training import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    quiet_known_noise()
    with user_errors("train.py"):
        metrics = train(cfg)
    return metrics.get("val/loss_recovered")


if __name__ == "__main__":
    main()
