"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen & Nanda 2025, "Learning multi-level
features with Matryoshka SAEs"; Nabeshima 2024): a dictionary of nested prefixes.

The latents are split into consecutive groups of ``group_sizes``; prefix ``m`` is groups
``0..m`` (width ``prefix_widths[m]``). Codes are selected as BatchTopK selects them, over the
whole dictionary; the loss (``losses.MatryoshkaLoss``) adds up the reconstruction error of
every prefix decoder ``x_hat_m = f[:, :w_m] @ W_dec[:w_m] + b_dec``, so the first groups must
reconstruct on their own and the later ones only refine. Inference and export are BatchTopK's:
a JumpReLU with the running threshold. SAELens 6.54 does the same: it registers
``matryoshka_batchtopk`` as a training class only and saves it as a ``jumprelu`` SAE.

On the sparse path the inner prefixes are decoded in one ``embedding_bag`` over the entries of
the inner groups, bagged by ``(group, token)``; a cumulative sum over the groups gives the
prefixes. The last (outer) prefix is the whole dictionary: ``forward``'s ``x_hat``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from sae_lightning.saes.base import SAEOutput
from sae_lightning.saes.batchtopk import BatchTopKSAE
from sae_lightning.saes.sparse_codes import sparse_decode
from sae_lightning.sparse import SparseEntries

DEFAULT_LEVELS = 5
"""Prefixes of the default split: d_sae / 16, / 8, / 4, / 2 and d_sae."""


def default_group_sizes(d_sae: int, levels: int = DEFAULT_LEVELS) -> list[int]:
    """Group sizes whose prefixes double up to ``d_sae`` (``d_sae / 2**(levels-1)``, ...,
    ``d_sae``), rounded down; prefixes that would repeat or be empty are dropped."""
    widths = sorted({max(1, d_sae >> i) for i in range(levels)})
    return [b - a for a, b in zip([0, *widths[:-1]], widths, strict=True)]


def check_group_sizes(group_sizes: Sequence[int] | None, d_sae: int) -> list[int]:
    """``group_sizes`` as a list of ints (``None``: ``default_group_sizes(d_sae)``).

    Raises:
        ValueError: If it is not a non-empty list of positive integers summing to ``d_sae``.
    """
    if group_sizes is None:
        return default_group_sizes(d_sae)
    if isinstance(group_sizes, (str, bytes)) or not isinstance(group_sizes, Sequence):
        raise ValueError(
            f"group_sizes must be a list of positive integers summing to d_sae={d_sae}, "
            f"got {group_sizes!r}"
        )
    sizes = list(group_sizes)
    bad = [s for s in sizes if isinstance(s, bool) or not isinstance(s, int) or s < 1]
    if not sizes or bad:
        raise ValueError(
            f"group_sizes must be a non-empty list of positive integers, got {sizes!r}"
            + (f" (bad entries: {bad!r})" if bad else "")
        )
    if sum(sizes) != d_sae:
        raise ValueError(
            f"group_sizes {sizes} sum to {sum(sizes)}, but they must sum to d_sae={d_sae} "
            f"(e.g. {default_group_sizes(d_sae)}, or null for that default)"
        )
    return sizes


class MatryoshkaSAE(BatchTopKSAE):
    """BatchTopK codes over nested prefixes of the dictionary (see the module docstring).

    Args:
        d_in: Width of the activations.
        d_sae: Number of latents.
        k: Mean active latents per token (over the whole dictionary).
        group_sizes: Sizes of the consecutive latent groups, summing to ``d_sae``; the
            prefixes are their running sums. ``None``: prefixes ``d_sae / 16``, ``/ 8``,
            ``/ 4``, ``/ 2``, ``d_sae`` (``default_group_sizes``).
        apply_b_dec_to_input: Subtract ``b_dec`` from the input before encoding.
        sparse_decoder: Decode and back-propagate over the active latents only.
        threshold_momentum: Weight of each batch's threshold in the running average.

    Example:
        >>> sae = MatryoshkaSAE(d_in=4, d_sae=16, k=2, group_sizes=[4, 4, 8])
        >>> sae.prefix_widths
        (4, 8, 16)
        >>> out = sae(torch.randn(8, 4))
        >>> [tuple(x.shape) for x in sae.inner_reconstructions(out)]
        [(8, 4), (8, 4)]
    """

    architecture: ClassVar[str] = "matryoshka_batchtopk"

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        k: int,
        group_sizes: Sequence[int] | None = None,
        apply_b_dec_to_input: bool = True,
        sparse_decoder: bool = True,
        threshold_momentum: float = 0.01,
    ) -> None:
        super().__init__(d_in, d_sae, k, apply_b_dec_to_input, sparse_decoder, threshold_momentum)
        self.group_sizes = check_group_sizes(group_sizes, d_sae)

    @property
    def prefix_widths(self) -> tuple[int, ...]:
        """The width of each nested prefix (running sums of ``group_sizes``; last: d_sae)."""
        return tuple(accumulate(self.group_sizes))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "group_sizes": list(self.group_sizes)}

    def export_metadata(self) -> dict[str, Any]:
        """What the JumpReLU export would otherwise lose: the prefix widths, under SAELens'
        name for them (``matryoshka_widths``), written into ``cfg.json``'s metadata."""
        return {"matryoshka_widths": list(self.prefix_widths)}

    def decode_prefix(
        self, feature_acts: Float[Tensor, "*batch d_sae"], width: int
    ) -> Float[Tensor, "*batch d_in"]:
        """``feature_acts[..., :width] @ W_dec[:width] + b_dec``: the first ``width`` latents
        alone (any width in ``[1, d_sae]``; the trained ones are ``prefix_widths``).

        Raises:
            ValueError: If ``feature_acts`` is not ``d_sae`` wide or ``width`` is out of range.
        """
        self._check_width(feature_acts, "d_sae", "feature_acts")
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= self.d_sae:
            raise ValueError(
                f"width must be an integer in [1, d_sae={self.d_sae}] (trained prefixes: "
                f"{list(self.prefix_widths)}), got {width!r}"
            )
        return feature_acts[..., :width] @ self.W_dec[:width] + self.b_dec

    def inner_reconstructions(self, out: SAEOutput) -> list[Float[Tensor, "batch d_in"]]:
        """``x_hat`` of every prefix but the outer one (that is ``out.x_hat``), ``[batch, d_in]``
        with the batch flattened, from ``out``'s codes (gradients flow to them and ``W_dec``)."""
        inner = self.prefix_widths[:-1]
        if not inner:
            return []
        if out.codes is not None:
            groups = self._inner_groups_sparse(out.codes).unbind(0)  # each [batch, d_in]
        else:
            flat = out.feature_acts.reshape(-1, self.d_sae)  # [batch, d_sae]
            starts = (0, *inner[:-1])
            groups = tuple(
                flat[:, a:b] @ self.W_dec[a:b] for a, b in zip(starts, inner, strict=True)
            )
        prefixes, running = [], self.b_dec
        for group in groups:  # running sums (not cumsum: on the CPU its backward is ~10x dearer)
            running = running + group  # [batch, d_in]
            prefixes.append(running)
        return prefixes

    def _inner_groups_sparse(self, codes: SparseEntries) -> Float[Tensor, "groups batch d_in"]:
        """Each inner group's decode (no ``b_dec``) from the row-ordered entries ``codes``."""
        inner = self.prefix_widths[:-1]
        n, groups = codes.n_rows, len(inner)
        bounds = torch.tensor(inner, device=codes.cols.device)
        group = torch.bucketize(codes.cols, bounds, right=True)  # [nnz]; == groups: outer
        order = group.sort(stable=True).indices  # rows stay ascending within each group
        keep = order[: int((group < groups).sum())]
        bag = group[keep] * n + codes.rows[keep]  # (group, token) -> one bag each
        crow = torch.zeros(groups * n + 1, dtype=torch.long, device=bag.device)
        crow[1:] = torch.bincount(bag, minlength=groups * n).cumsum(0)
        bags = SparseEntries(
            bag, codes.cols[keep], codes.values[keep], groups * n, self.d_sae, "row", crow
        )
        return sparse_decode(bags, self.W_dec).reshape(groups, n, self.d_in)
