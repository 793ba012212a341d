"""A one-command replication of *Towards Monosemanticity*'s detailed investigation.

``python train.py -m experiment=replicate_monosemanticity`` trains two SAEs (seeds 0 and 1)
on the embedded model; at the end of the sweep the :class:`Replication` Hydra callback runs
``analyze`` on both with every criterion and universality between them, finds the full-stop,
``import``, ``for`` and ``else`` features, and writes ``<sweep>/replication/README.md`` (with
``numbers.json``, density histograms and dashboards). Re-make it for a finished sweep with
``python -m sae_lightning.replication <sweep dir>``.
"""

from sae_lightning.replication.callback import Replication
from sae_lightning.replication.run import replicate

__all__ = ["Replication", "replicate"]
