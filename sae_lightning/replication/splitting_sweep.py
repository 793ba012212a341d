"""The Hydra callback of ``experiment=feature_splitting``: after the sweep has trained one SAE
per dictionary size (each with its own seed), match them with
:func:`~sae_lightning.replication.splitting.split_features` and write
``<sweep>/splitting/`` (``splitting.md``, ``.html``, ``.json``).

    python train.py -m experiment=feature_splitting
    python -m sae_lightning.replication.splitting_sweep multirun/<date>/<time>   # re-match
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sae_lightning.formats import CFG_FILE
from sae_lightning.sweep import exit_on_failure, finished_jobs

log = logging.getLogger(__name__)

OUT_DIR = "splitting"
"""The report's folder inside the sweep folder."""


def sized_runs(sweep_dir: str | Path) -> list[Path]:
    """The sweep's finished jobs (``metrics.json`` and an exported ``sae/``), smallest
    dictionary first.

    Raises:
        ValueError: If fewer than two finished jobs exist, or two share a ``d_sae``.
    """
    sweep = Path(sweep_dir)
    done = finished_jobs(sweep)
    sizes = {p: int(json.loads((p / "sae" / CFG_FILE).read_text())["d_sae"]) for p in done}
    if len(done) < 2 or len(set(sizes.values())) < len(done):
        found = {p.name: sizes[p] for p in sorted(done)}
        raise ValueError(
            f"feature splitting needs two or more finished runs of different d_sae under "
            f"{sweep}; found {found or 'none'} (job: d_sae): run 'python train.py -m "
            "experiment=feature_splitting' (note the -m)"
        )
    return sorted(done, key=sizes.__getitem__)


def split_sweep(sweep_dir: str | Path, overrides: list[str] | None = None) -> Path:
    """Match the sweep's SAEs across sizes into ``<sweep>/splitting/``; returns the Markdown
    report's path. ``overrides``: options of ``conf/splitting.yaml`` (``tokens=...``)."""
    from sae_lightning.replication.splitting import compose_config, split_features

    runs = sized_runs(sweep_dir)
    out = Path(sweep_dir) / OUT_DIR
    cfg = compose_config([*map(str, runs), f"out={out}", *(overrides or [])])
    return split_features(cfg)


class FeatureSplitting(Callback):
    """At the end of ``python train.py -m experiment=feature_splitting``: the splitting
    report of the sizes trained (the config's ``splitting`` node: options of
    ``conf/splitting.yaml``, e.g. ``splitting.tokens=50000``). A failure fails the command
    (exit status 1)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        options = OmegaConf.to_container(config.get("splitting") or {}, resolve=True)
        overrides = [f"{key}={'null' if v is None else v}" for key, v in options.items()]
        with exit_on_failure("the feature splitting report"):
            path = split_sweep(config.hydra.sweep.dir, overrides)
            log.info("feature splitting across the sweep's sizes: %s", path)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) < 2:
        sys.exit("usage: python -m sae_lightning.replication.splitting_sweep SWEEP_DIR [key=value]")
    sys.stdout.write(f"{split_sweep(sys.argv[1], sys.argv[2:])}\n")
