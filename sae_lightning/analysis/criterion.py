"""The criterion plugin contract: a Lightning ``Callback`` that reads the analysis pass.

A criterion accumulates what it needs from each :class:`AnalysisBatch` in torchmetrics
states (bounded memory, DDP-safe), may run a small second pass at the end, and writes its
per-feature numbers and verdicts into the shared :class:`~sae_lightning.analysis.report.Report`.
It is selected by config alone: an importable class plus one YAML file in ``conf/criteria/``.

Example (a complete criterion living outside the package)::

    class FiresOften(Criterion):
        name = "fires_often"

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
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning as L
import torch
from jaxtyping import Float, Int
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

from sae_lightning.sparse import SparseEntries, firing_entries


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
    """All feature activations of the ``compare_with`` SAE on the same tokens, if any."""
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
    extras: dict[str, Any] = field(default_factory=dict)
    """Criterion outputs other criteria may read (e.g. the automatic proxies)."""
    drop_bos: bool = True
    """Position 0 (BOS) of every context is not analysed, as training does not train on it:
    no criterion, first pass, ablation or dashboard activation sees it (it may still be
    shown as context in a window)."""

    @property
    def start(self) -> int:
        """The first analysed position of every context (1 when BOS is dropped)."""
        return int(self.drop_bos)


class Criterion(L.Callback):
    """Base class of every criterion plugin.

    Subclasses set ``name`` and implement :meth:`setup_metrics`, :meth:`update` and
    :meth:`results`. Every Metric attribute is moved to the module's device in ``setup``
    (a Metric held by a Callback is not moved with the module).
    """

    name: ClassVar[str] = ""
    order: ClassVar[int] = 100
    """Criteria finish in this order (lower first); later ones may read ``ctx.extras``."""
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
    def results(self, ctx: AnalysisContext) -> dict[int, dict[str, Any]]:
        """Per analysed feature (by dictionary index): JSON-able numbers and ``verdict``."""

    def summary(self, results: dict[int, dict[str, Any]]) -> dict[str, float]:
        """Scalars for TensorBoard (``criteria/<name>/<key>``); default: pass rate."""
        verdicts = [r["verdict"] for r in results.values() if r.get("verdict") is not None]
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
