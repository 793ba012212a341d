"""Not a neuron: a feature should not just be one MLP neuron under another name.

Two checks from *Towards Monosemanticity*: the feature's activation is correlated (Pearson,
streamed as running sums) with every neuron's activation and the best one is reported; and
the decoder row's alignment with the neuron basis, ``max_i |W_dec[f, i]| / ||W_dec[f]||``
(the largest ``|cos|`` with a standard basis vector; 1 for a single-neuron direction).
It provides the artefact ``NEURON_MAX_CORR`` (``{feature: |max corr|}``).
"""

from __future__ import annotations

from typing import ClassVar

from jaxtyping import Float
from torch import Tensor
from typing_extensions import override

from plugins._common import neuron_mean, number
from sae_lightning.analysis.artefacts import NEURON_MAX_CORR
from sae_lightning.analysis.criterion import AnalysisBatch, AnalysisContext, Criterion
from sae_lightning.analysis.records import NotANeuronResult
from sae_lightning.metrics.correlation import StreamingPearson, max_correlation


def basis_alignment(w_dec: Float[Tensor, "f d_in"]) -> Float[Tensor, " f"]:
    """Largest ``|cos|`` of each decoder row with a standard basis vector (0 for a zero row)."""
    norms = w_dec.norm(dim=1)
    return w_dec.abs().amax(dim=1) / norms.where(norms > 0, 1.0)


class NotANeuron(Criterion):
    """Best-correlated MLP neuron and decoder alignment with the neuron basis.

    A feature that is constant over the pass (never fired) gets verdict None.

    Args:
        threshold: The verdict is ``|max correlation| < threshold``.
    """

    name: ClassVar[str] = NotANeuronResult.criterion
    headline: ClassVar[str | None] = NotANeuronResult.headline
    provides = (NEURON_MAX_CORR,)

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        self.threshold = threshold

    @override
    def setup_metrics(self, n_features: int, ctx: AnalysisContext) -> None:
        d_in = int(ctx.sae.W_dec.shape[1])
        self.pearson = StreamingPearson(n_features, d_in, y_shift=neuron_mean(ctx))

    @override
    def update(self, batch: AnalysisBatch, ctx: AnalysisContext) -> None:
        e = batch.firing()  # features are sparse: O(nnz * d_in), not O(n * F * d_in)
        self.pearson.update_entries(e.rows, e.cols, e.values, batch.neuron_acts.flatten(0, 1))

    @override
    def results(self, ctx: AnalysisContext) -> dict[int, NotANeuronResult]:
        matrix = self.pearson.compute().view(len(ctx.features), -1)  # [F, d_in]
        corr, neuron = max_correlation(matrix)  # [F] each
        constant = matrix.abs().amax(dim=1) == 0  # never fired (or constant): no verdict
        alignment = basis_alignment(ctx.sae.W_dec[ctx.features].detach().double())  # [F]
        ctx.artefacts.put(
            NEURON_MAX_CORR, dict(zip(ctx.features, corr.abs().tolist(), strict=True))
        )
        out: dict[int, NotANeuronResult] = {}
        for row, f in enumerate(ctx.features):
            value = float(corr[row])
            out[f] = NotANeuronResult(
                max_neuron_corr=number(value),
                neuron=int(neuron[row]),
                decoder_basis_alignment=number(alignment[row]),
                verdict=None if constant[row] else abs(value) < self.threshold,
            )
        return out
