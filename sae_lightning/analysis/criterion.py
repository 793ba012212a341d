"""The criterion plugin contract: a Lightning ``Callback`` that reads the analysis pass.

A criterion accumulates what it needs from each :class:`AnalysisBatch` in torchmetrics
states (bounded memory, DDP-safe), may run a small second pass at the end, and writes its
per-feature numbers and verdicts into the shared
:class:`~sae_lightning.analysis.results.AnalysisResults`. It is selected by config alone: an
importable class plus one YAML file in ``conf/criteria/``.

Criteria hand each other data only through ``ctx.artefacts``
(:mod:`sae_lightning.analysis.artefacts`): a criterion declares what it ``provides``,
``needs`` and ``uses``, and :func:`~sae_lightning.analysis.ordering.order_criteria`
finishes providers before their readers (otherwise in the order selected). Abstract methods
are enforced: a subclass that misses one cannot be instantiated.

Example (a complete criterion living outside the package)::

    class FiresOften(Criterion):
        name = "fires_often"
        headline = "density"  # the number the scorecard shows (default: its first float)

        def __init__(self, min_density: float = 1e-3) -> None:
            super().__init__()
            self.min_density = min_density
            self.counts = FeatureDensity(1)  # resized in setup_metrics

        def setup_metrics(self, n_features, ctx):
            self.counts = FeatureDensity(n_features)

        def update(self, batch, ctx):
            self.counts.update(batch.feature_acts.flatten(0, 1))  # or sparse: batch.firing()

        def results(self, ctx):
            density = self.counts.compute()
            return {f: {"density": float(d), "verdict": bool(d >= self.min_density)}
                    for f, d in zip(ctx.features, density.tolist())}

A criterion that reads another's artefact declares it; ``top_activations`` then finishes
first whatever the order selected (and without it the analysis refuses to start)::

    class TopCount(Criterion):
        name = "top_count"
        needs = (TOP_EXAMPLES,)  # from sae_lightning.analysis.artefacts
        ...
        def results(self, ctx):
            top = ctx.artefacts.get(TOP_EXAMPLES)  # {feature: [(token_index, act), ...]}
            return {f: {"n_top": len(top[f]), "verdict": None} for f in ctx.features}
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning as L
import torch
from jaxtyping import Float, Int
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

from sae_lightning.analysis.artefacts import Artefact, Artefacts
from sae_lightning.analysis.reader import Reader
from sae_lightning.analysis.records import Record, value_of
from sae_lightning.sparse import SparseEntries, firing_entries

Results = Mapping[int, Record | dict[str, Any]]
"""A criterion's results: per analysed feature, a record or a dict with a ``verdict``."""


@dataclass
class AnalysisBatch:
    """What the analysis pass hands every criterion for one batch of contexts.

    Every tensor covers only the *analysed* positions of each context, ``start`` to the
    end: with ``AnalysisContext.drop_bos`` (the default, as training drops it) the BOS
    position is not in the batch at all, so a criterion that counts rows, tokens or
    firings (densities, denominators, correlations) counts trained positions only.
    ``token_index`` still names each token's place in ``AnalysisContext.contexts``.
    """

    tokens: Int[Tensor, "batch pos"]
    """Token ids of the analysed positions (``tokens[:, j]`` is position ``start + j``)."""
    token_index: Int[Tensor, "batch pos"]
    """Global id of each token: context index * n_ctx + position (``position >= start``)."""
    feature_acts: Float[Tensor, "batch pos n_features"]
    """Activations of the analysed features (in ``AnalysisContext.features`` order)."""
    neuron_acts: Float[Tensor, "batch pos d_in"]
    """The hooked activations themselves (the MLP neurons for ``mlp.hook_post``)."""
    other_acts: Float[Tensor, "batch pos d_other"] | None = None
    """All feature activations of the ``compare_with`` SAE on the same tokens, if any (read
    from ``AnalysisContext.other_model`` when it reads another model)."""
    mlp_neurons: Float[Tensor, "batch pos d_mlp"] | None = None
    """Across models only: the MLP neurons of ``model`` at the hook's layer."""
    other_mlp_neurons: Float[Tensor, "batch pos d_mlp_other"] | None = None
    """Across models only: the MLP neurons of ``other_model`` on the same tokens."""
    start: int = 0
    """Position in its context of column 0 (``AnalysisContext.start``: 1 when BOS is dropped)."""
    _firing: SparseEntries | None = field(default=None, init=False, repr=False)

    def firing(self) -> SparseEntries:
        """The nonzero feature activations over flattened positions (``batch * pos`` rows),
        sorted by feature: extracted on first use and shared by every criterion. Most
        criteria should read these rather than the dense ``feature_acts`` (see
        :mod:`sae_lightning.sparse`)."""
        if self._firing is None:
            self._firing = firing_entries(self.feature_acts.flatten(0, 1))
        return self._firing


@dataclass
class AnalysisContext:
    """Everything about the analysis that is not per batch."""

    sae: Any
    """The SAE under analysis (an ``sae_lightning.saes.SAE``)."""
    model: Any
    """The frozen TransformerBridge."""
    hook_name: str
    features: list[int]
    """Indices of the analysed features in the SAE's dictionary."""
    str_tokens: list[str]
    """The vocabulary as strings, indexed by token id."""
    contexts: Int[Tensor, "n_contexts n_ctx"]
    """All analysed contexts, to look up a token's context by ``token_index``."""
    other_sae: Any = None
    """The SAE to compare with (universality), or None."""
    other_model: Any = None
    """The frozen model ``other_sae`` reads when it is not ``model`` (cross-model
    universality; the two share a tokenizer), else None."""
    other_hook_name: str | None = None
    """Where ``other_sae`` reads ``other_model`` (None: ``hook_name``)."""
    artefacts: Artefacts = field(default_factory=Artefacts)
    """What criteria hand each other (see :mod:`sae_lightning.analysis.artefacts`)."""
    drop_bos: bool = True
    """Position 0 (BOS) of every context is not analysed, as training does not train on it:
    no criterion, first pass, ablation or dashboard activation sees it (it may still be
    shown as context in a window)."""
    hook_name_out: str | None = None
    """Where a transcoder's decoder writes (its ``hook_name_out``); None: an SAE, whose
    decoder writes where it reads (``hook_name``)."""

    others: tuple[tuple[Any, str], ...] = ()
    """A crosscoder's further sources, ``(model, hook_name)`` each, in input order after
    ``(model, hook_name)`` (its features read them all, :class:`Reader`); empty otherwise."""

    @property
    def write_hook(self) -> str:
        """The hook the decoder's directions live at: ablations edit it, logit weights
        start from it (a transcoder's output hook, else ``hook_name``)."""
        return self.reader.writes

    @property
    def reader(self) -> Reader:
        """What the SAE reads and where it writes: capture its input and ablate through it."""
        return Reader(self.model, self.hook_name, self.hook_name_out, self.others)

    @property
    def start(self) -> int:
        """The first analysed position of every context (1 when BOS is dropped)."""
        return int(self.drop_bos)


class Criterion(L.Callback, metaclass=ABCMeta):
    """Base class of every criterion plugin.

    Subclasses set ``name`` and implement :meth:`setup_metrics`, :meth:`update` and
    :meth:`results` (enforced: a subclass missing one raises ``TypeError`` naming it when
    instantiated). Every Metric attribute is moved to the module's device in ``setup``.
    """

    name: ClassVar[str] = ""
    headline: ClassVar[str | None] = None
    """The result key the scorecard and the dashboards show; None: its first float key."""
    provides: ClassVar[tuple[Artefact[Any], ...]] = ()
    """Artefacts it puts into ``ctx.artefacts`` in :meth:`results` (checked)."""
    needs: ClassVar[tuple[Artefact[Any], ...]] = ()
    """Artefacts it reads in :meth:`results`: a selected criterion must provide each."""
    uses: ClassVar[tuple[Artefact[Any], ...]] = ()
    """Artefacts it reads if a selected criterion provides them (else it does without)."""
    needs_compare_with: ClassVar[bool] = False
    """True if it reads ``ctx.other_sae``: analyze.py then refuses to start without
    ``compare_with=`` (checked before anything loads)."""

    @property
    def state_key(self) -> str:
        return f"{type(self).__qualname__}[{self.name}]"

    @abstractmethod
    def setup_metrics(self, n_features: int, ctx: AnalysisContext) -> None:
        """Create the Metric states for ``n_features`` analysed features."""

    @abstractmethod
    def update(self, batch: AnalysisBatch, ctx: AnalysisContext) -> None:
        """Accumulate one batch."""

    @abstractmethod
    def results(self, ctx: AnalysisContext) -> Results:
        """Per analysed feature (by dictionary index): a record (built-in criteria, see
        :mod:`sae_lightning.analysis.records`) or a dict of JSON-able numbers, each with a
        ``verdict``. Puts every artefact of :attr:`provides` into ``ctx.artefacts``."""

    def collect(self, ctx: AnalysisContext) -> Results:
        """:meth:`results`, checked to have provided what the criterion declares.

        Raises:
            RuntimeError: If an artefact of :attr:`provides` was not put.
        """
        results = self.results(ctx)
        missing = [a.name for a in self.provides if a not in ctx.artefacts]
        if missing:
            raise RuntimeError(
                f"criterion {self.name!r} declares it provides {missing} but its results() "
                "did not put them into ctx.artefacts"
            )
        return results

    def summary(self, results: Results) -> dict[str, float]:
        """Scalars for TensorBoard (``criteria/<name>/<key>``); default: pass rate."""
        verdicts = [v for r in results.values() if (v := value_of(r, "verdict")) is not None]
        return {"pass_rate": sum(map(bool, verdicts)) / len(verdicts)} if verdicts else {}

    def metrics(self) -> list[Metric]:
        return [m for m in vars(self).values() if isinstance(m, Metric)]

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        ctx = pl_module.ctx
        self.setup_metrics(len(ctx.features), ctx)
        for metric in self.metrics():
            metric.to(pl_module.device)

    @override
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        with torch.no_grad():
            self.update(outputs, pl_module.ctx)
