"""A complete criterion plugin living outside the package: what share of each feature's
activation mass falls on tokens made of digits. Select it by config alone:

    PYTHONPATH=examples/custom_criterion python analyze.py \
        "hydra.searchpath=[file://$PWD/examples/custom_criterion/conf]" \
        "criteria=[top_activations,digit_share]"
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric

from sae_lightning.analysis.criterion import AnalysisBatch, AnalysisContext, Criterion


class MassSums(Metric):
    """Per feature: total activation mass, and the part on digit tokens (summed over ranks)."""

    full_state_update = False

    def __init__(self, n_features: int) -> None:
        super().__init__()
        for name in ("total", "digits"):
            zeros = torch.zeros(n_features, dtype=torch.float64)
            self.add_state(name, default=zeros, dist_reduce_fx="sum")

    def update(self, cols: torch.Tensor, values: torch.Tensor, on_digit: torch.Tensor) -> None:
        self.total.index_add_(0, cols, values.double())
        self.digits.index_add_(0, cols[on_digit], values[on_digit].double())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.total, self.digits


class DigitShare(Criterion):
    """Share of the activation mass on digit tokens; the verdict is ``share >= threshold``.

    Args:
        threshold: Smallest share that counts as a digit feature.
    """

    name = "digit_share"
    headline = "digit_share"  # the number the scorecard shows

    def __init__(self, threshold: float = 0.8) -> None:
        super().__init__()
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        self.threshold = threshold

    def setup_metrics(self, n_features: int, ctx: AnalysisContext) -> None:
        self.sums = MassSums(n_features)  # moved to the device by Criterion.setup
        digits = [s.strip().isdigit() for s in ctx.str_tokens]
        self.is_digit = torch.tensor(digits, dtype=torch.bool)  # [vocab]

    def update(self, batch: AnalysisBatch, ctx: AnalysisContext) -> None:
        e = batch.firing()  # the nonzero activations: rows (positions), cols (features), values
        tokens = batch.tokens.flatten()[e.rows]  # [nnz]
        self.sums.update(e.cols, e.values, self.is_digit.to(tokens.device)[tokens])

    def results(self, ctx: AnalysisContext) -> dict[int, dict[str, Any]]:
        total, digits = (t.view(-1).cpu() for t in self.sums.compute())
        out = {}
        for row, f in enumerate(ctx.features):
            share = float(digits[row] / total[row]) if total[row] > 0 else None
            verdict = None if share is None else share >= self.threshold
            out[f] = {"digit_share": share, "verdict": verdict}
        return out
