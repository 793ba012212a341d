"""The Hydra callback that turns the three-SAE training sweep into the replication report."""

from __future__ import annotations

import logging
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict

from sae_lightning.sweep import exit_on_failure

log = logging.getLogger(__name__)


class Replication(Callback):
    """At the end of ``python train.py -m experiment=replicate_monosemanticity``: analyse the
    runs A, A' (toy-1l) and B (toy-1l-b) and write ``<sweep>/replication/`` (see
    :func:`sae_lightning.replication.replicate`).

    Its settings are the config's ``replication`` node, so they can be overridden on the
    command line (``replication.publish_dir=docs/replication``).
    """

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        log.warning(
            "experiment=replicate_monosemanticity trains three SAEs (A, A', B) and needs "
            "multirun: python train.py -m experiment=replicate_monosemanticity (this single run "
            "trained SAE %s, seed %s only; no replication report was written)",
            config.get("replication", {}).get("role"),
            config.get("seed"),
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from sae_lightning.replication.run import replicate

        settings = config.replication
        with open_dict(settings):
            settings.command = settings.get("command") or " ".join(
                ["python", *[a for a in sys.argv if a]]
            )
        with exit_on_failure("the replication report"):
            replicate(config.hydra.sweep.dir, settings, config.data.get("source"))
