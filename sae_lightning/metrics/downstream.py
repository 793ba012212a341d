"""Downstream loss: how much of the model's next-token loss survives splicing in the SAE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from torchmetrics import Metric

_KEYS = ("ce_clean", "ce_sae", "ce_zero", "kl")


def per_token_ce_and_kl(
    logits_clean: Float[Tensor, "b pos vocab"],
    logits_other: Float[Tensor, "b pos vocab"],
    tokens: Int[Tensor, "b pos"],
) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"], Float[Tensor, " n"]]:
    """Per-position next-token cross-entropies and KL(clean ‖ other), with ``n = b*(pos-1)``.

    Position ``t`` predicts ``tokens[:, t + 1]`` from ``logits[:, t]``; the last position
    predicts nothing. Everything is computed in float32 through ``log_softmax``.

    Returns:
        ``(ce_clean, ce_other, kl)``, each flattened to ``[b * (pos - 1)]``.
    """
    if logits_clean.shape != logits_other.shape:
        raise ValueError(
            f"logits shapes differ: clean {list(logits_clean.shape)}, "
            f"other {list(logits_other.shape)}"
        )
    if logits_clean.ndim != 3 or tokens.shape != logits_clean.shape[:2]:
        raise ValueError(
            f"expected logits [b, pos, vocab] and tokens [b, pos], got logits "
            f"{list(logits_clean.shape)} and tokens {list(tokens.shape)}"
        )
    if tokens.shape[1] < 2:
        raise ValueError(
            f"need at least 2 positions to predict a next token, got {tokens.shape[1]}"
        )
    vocab = logits_clean.shape[-1]
    logp_clean = F.log_softmax(logits_clean[:, :-1].float(), dim=-1).reshape(-1, vocab)
    logp_other = F.log_softmax(logits_other[:, :-1].float(), dim=-1).reshape(-1, vocab)
    target = tokens[:, 1:].reshape(-1, 1).long()  # [b*(pos-1), 1]
    ce_clean = -logp_clean.gather(-1, target).squeeze(-1)
    ce_other = -logp_other.gather(-1, target).squeeze(-1)
    kl = F.kl_div(logp_other, logp_clean, reduction="none", log_target=True).sum(-1)
    return ce_clean, ce_other, kl


def _downstream_update(*per_token: Float[Tensor, " n"]) -> tuple[list[Tensor], int]:
    """Batch sums of each per-token series (float64), and the token count."""
    return [t.detach().double().sum() for t in per_token], per_token[0].numel()


def _downstream_compute(
    sum_ce_clean: Tensor, sum_ce_sae: Tensor, sum_ce_zero: Tensor, sum_kl: Tensor, n: Tensor
) -> dict[str, Tensor]:
    """Means over tokens, plus ``loss_recovered`` from those means.

    ``loss_recovered = (ce_zero − ce_sae) / (ce_zero − ce_clean)``: 1 when the SAE costs
    nothing, 0 when it is as bad as zero-ablation (undefined if zero-ablation costs nothing).
    """
    ce_clean, ce_sae, ce_zero = sum_ce_clean / n, sum_ce_sae / n, sum_ce_zero / n
    return {
        "ce_loss_clean": ce_clean,
        "ce_loss_sae": ce_sae,
        "ce_loss_zero_ablation": ce_zero,
        "loss_recovered": (ce_zero - ce_sae) / (ce_zero - ce_clean),
        "kl": sum_kl / n,
    }


class DownstreamLoss(Metric):
    """Mean next-token losses with the SAE spliced in, against the clean and ablated model.

    ``compute()`` returns ``ce_loss_clean``, ``ce_loss_sae``, ``ce_loss_zero_ablation``,
    ``kl`` (means over all tokens seen) and ``loss_recovered`` (from those means).

    Example:
        >>> metric = DownstreamLoss()
        >>> ce = torch.tensor([1.0, 3.0])
        >>> metric.update(ce, ce, ce + 2.0, torch.zeros(2))
        >>> metric.compute()["loss_recovered"].item()
        1.0
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    sum_ce_clean: Tensor
    sum_ce_sae: Tensor
    sum_ce_zero: Tensor
    sum_kl: Tensor
    n: Tensor

    def __init__(self) -> None:
        super().__init__()
        for key in _KEYS:
            zero = torch.tensor(0.0, dtype=torch.float64)
            self.add_state(f"sum_{key}", default=zero, dist_reduce_fx="sum")
        self.add_state("n", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        ce_clean: Float[Tensor, " n"],
        ce_sae: Float[Tensor, " n"],
        ce_zero: Float[Tensor, " n"],
        kl: Float[Tensor, " n"],
    ) -> None:
        """Add per-token losses (see :func:`per_token_ce_and_kl`) for one batch."""
        inputs = {"ce_clean": ce_clean, "ce_sae": ce_sae, "ce_zero": ce_zero, "kl": kl}
        for name, t in inputs.items():
            if t.ndim != 1 or t.shape != ce_clean.shape:
                shapes = {k: list(v.shape) for k, v in inputs.items()}
                raise ValueError(
                    f"expected four 1-D tensors of equal length, got {shapes} ({name})"
                )
        sums, n = _downstream_update(ce_clean, ce_sae, ce_zero, kl)
        for key, s in zip(_KEYS, sums, strict=True):
            setattr(self, f"sum_{key}", getattr(self, f"sum_{key}") + s)
        self.n = self.n + n

    def compute(self) -> dict[str, Tensor]:
        """Scalar float64 means (and ``loss_recovered``) since the last reset."""
        return _downstream_compute(
            self.sum_ce_clean, self.sum_ce_sae, self.sum_ce_zero, self.sum_kl, self.n
        )
