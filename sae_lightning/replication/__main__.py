"""Re-make the replication report of a finished sweep (re-runs the analysis, not training).

python -m sae_lightning.replication multirun/<date>/<time> [--publish docs/replication]
    [--command "the command shown in the report" (default: this one)]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from sae_lightning.replication.run import find_runs, replicate


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m sae_lightning.replication")
    parser.add_argument("sweep_dir", type=Path, help="the multirun folder of the runs A, B and A'")
    parser.add_argument("--publish", type=Path, default=None, help="also copy the report here")
    parser.add_argument(
        "--command",
        default=None,
        help="the command the report shows (e.g. the sweep's own, which this re-make "
        "reproduces); default: this re-make's",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    first = find_runs(args.sweep_dir)["a"]
    cfg = OmegaConf.load(first / ".hydra" / "config.yaml")
    if "replication" not in cfg:
        raise SystemExit(
            f"{first}/.hydra/config.yaml has no replication settings: was the sweep run with "
            "experiment=replicate_monosemanticity?"
        )
    settings = cfg.replication
    with open_dict(settings):
        settings.command = args.command or f"python -m sae_lightning.replication {args.sweep_dir}"
        if args.publish is not None:
            settings.publish_dir = str(args.publish)
    return replicate(args.sweep_dir, settings, cfg.data.get("source"))


if __name__ == "__main__":
    main()
