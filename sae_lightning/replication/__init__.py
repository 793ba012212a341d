"""A one-command replication of *Towards Monosemanticity*'s detailed investigation.

``python train.py -m experiment=replicate_monosemanticity`` trains three SAEs of one recipe:
A on toy-1l, B on the second transformer toy-1l-b, A' on toy-1l with another seed; at the end
of the sweep the :class:`Replication` Hydra callback runs ``analyze`` on them with every
criterion, universality A vs B across transformers (against the neurons of toy-1l matched to
those of toy-1l-b, the paper's baseline) and A vs A' on one transformer, finds the full-stop,
``import``, ``for`` and ``else`` features, and writes ``<sweep>/replication/README.md`` (with
``numbers.json``, density histograms and dashboards). Re-make it for a finished sweep with
``python -m sae_lightning.replication <sweep dir>``.
"""

from sae_lightning.replication.callback import Replication
from sae_lightning.replication.run import replicate

__all__ = ["Replication", "replicate"]
