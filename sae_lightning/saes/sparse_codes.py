"""The autograd functions that train SAEs on their sparse codes (``SparseEntries`` in row
order, CSR over ``[batch, d_sae]``) at O(L0 * d_in) per token past the dense encoder
forward, and the per-batch choice of that sparse path.

Both functions compute exactly what the dense formulas compute; only the backward differs:

- ``gather_pre``: ``pre[rows, cols]`` where ``pre = x @ W + bias`` was computed without
  autograd. Backward: ``dW = x^T G`` with G the sparse ``[batch, d_sae]`` gradient (a sparse
  matmul), ``dbias`` an index_add, instead of a dense ``[d_in, batch] x [batch, d_sae]``.
- ``sparse_decode``: ``codes @ W_dec`` by ``embedding_bag`` over the active latents.
  Backward: ``dW_dec = codes^T dY`` (sparse matmul) and ``dvalues`` a sampled dense-dense
  matmul (SDDMM) on the code's pattern, instead of two dense matmuls.
"""

from __future__ import annotations

import warnings

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch.autograd.function import FunctionCtx

from sae_lightning.sparse import SparseEntries


def codes_from_flat(flat: Int[Tensor, " nnz"], n_rows: int, d_sae: int) -> tuple[Tensor, ...]:
    """``(rows, cols, crow)`` of flat indices ``row * d_sae + col`` (any order)."""
    flat = flat.sort().values  # row-major: rows ascending, columns ascending within a row
    rows, cols = flat // d_sae, flat % d_sae
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=flat.device)
    crow[1:] = torch.bincount(rows, minlength=n_rows).cumsum(0)
    return rows, cols, crow


def mask_entries(mask: Bool[Tensor, "batch d_sae"]) -> tuple[Tensor, Tensor]:
    """``mask.nonzero(as_tuple=True)``: the True entries' rows and columns, row-major.

    On CPU, a sparse mask is read 8 entries at a time: its bytes viewed as int64 words, the
    nonzero words found first (one pass over ``batch * d_sae / 8`` words), then the entries
    inside those words only. At a trained SAE's density (~1% of entries) that is about twice
    as fast as ``nonzero`` over every entry; the result is identical, order included.
    """
    n, d = mask.shape
    if mask.is_cuda or d % 8 or not mask.is_contiguous() or mask.storage_offset() % 8:
        return mask.nonzero(as_tuple=True)  # row-major, columns ascending within a row
    words = mask.view(torch.uint8).view(torch.int64)  # [n, d / 8]: 8 entries per word
    word_rows, word_cols = words.nonzero(as_tuple=True)  # the words holding an entry
    in_word = mask.view(n, d // 8, 8)[word_rows, word_cols]  # [words, 8]
    hit, offset = in_word.nonzero(as_tuple=True)  # by word, then by position in the word
    return word_rows[hit], word_cols[hit] * 8 + offset


def codes_from_mask(mask: Bool[Tensor, "batch d_sae"]) -> tuple[Tensor, Tensor, Tensor]:
    """``(rows, cols, crow)`` of the True entries of ``mask``, row-major."""
    rows, cols = mask_entries(mask)  # row-major, columns ascending within a row
    crow = torch.zeros(mask.shape[0] + 1, dtype=torch.long, device=mask.device)
    crow[1:] = torch.bincount(rows, minlength=mask.shape[0]).cumsum(0)
    return rows, cols, crow


def check_sparse_threshold(value: float) -> float:
    """``value`` as a float if it is a density in [0, 1].

    Raises:
        ValueError: If ``value`` is not a number in [0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"sparse_threshold must be a code density in [0, 1], got {value!r}")
    return float(value)


def select_sparse(
    mask: Bool[Tensor, "batch d_sae"], threshold: float
) -> tuple[Tensor, Tensor, Tensor] | None:
    """``(rows, cols, crow)`` of ``mask`` when its density ``nnz / (batch * d_sae)`` is at
    most ``threshold`` (and ``threshold > 0``); ``None``: train this batch densely."""
    n_entries = mask.numel()
    if threshold <= 0 or n_entries == 0:
        return None
    # a count first: nonzero() on a dense batch would be wasted. count_nonzero, not sum():
    # a bool sum widens every entry to int64 (on CPU ~15x slower than the count)
    nnz = int(torch.count_nonzero(mask))
    if nnz == 0 or nnz > threshold * n_entries:
        return None
    return codes_from_mask(mask)


def sparse_l1(codes: SparseEntries, W_dec: Float[Tensor, "d_sae d_in"] | None) -> Tensor:
    """``l1(codes.to_dense(), ||W_dec_i||)`` (or unweighted without ``W_dec``) from the entries:
    the decoder norms of the active latents only."""
    abs_values = codes.values.abs()  # [nnz]
    if W_dec is not None:
        active, inverse = codes.cols.unique(return_inverse=True)
        abs_values = abs_values * W_dec[active].norm(dim=-1)[inverse]
    return abs_values.sum() / codes.n_rows


def _scatter_rows(
    rows: Int[Tensor, " nnz"],
    cols: Int[Tensor, " nnz"],
    weights: Float[Tensor, " nnz"],
    dense: Float[Tensor, "n d"],
    n_out: int,
) -> Float[Tensor, "n_out d"]:
    """``S^T @ dense`` for the sparse ``S [n, n_out]`` with ``weights`` at ``(rows, cols)``:
    ``out[c] = sum of weights[e] * dense[rows[e]] over the entries e of column c``.

    One ``embedding_bag`` over the entries in column order (a stable sort of ``cols``, one
    bag per output row): a gather-and-sum kernel, about twice as fast on CPU as
    ``torch.sparse.mm`` on a COO matrix, which coalesces first."""
    order = torch.sort(cols, stable=True).indices  # [nnz]
    starts = torch.zeros(n_out, dtype=torch.long, device=cols.device)  # [n_out]
    starts[1:] = torch.bincount(cols, minlength=n_out)[:-1].cumsum(0)
    return torch.nn.functional.embedding_bag(
        rows[order], dense, starts, mode="sum", per_sample_weights=weights[order].to(dense.dtype)
    )


class _GatherPre(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx,
        pre: Tensor,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        b_dec: Tensor | None,
        rows: Tensor,
        cols: Tensor,
        pre_bias: Tensor | None,
    ) -> Tensor:
        ctx.save_for_backward(x, weight, b_dec, rows, cols)
        # in the parameters' dtype: under autocast ``pre`` is the bf16 product, but what
        # follows (nonlinearity, O(nnz) decoder, losses) is cheap and runs in float32
        picked = pre[rows, cols].to(weight.dtype)
        return picked if pre_bias is None else picked + pre_bias[cols]

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor):  # type: ignore[override]
        x, weight, b_dec, rows, cols = ctx.saved_tensors
        d_sae, n = weight.shape[1], x.shape[0]
        grad_x = grad_w = grad_b = grad_b_dec = None
        if ctx.needs_input_grad[1]:  # dx = G @ W^T, G sparse [batch, d_sae]
            grad_x = _scatter_rows(cols, rows, grad, weight.T, n)
        if ctx.needs_input_grad[2]:  # dW^T = G^T @ (x - b_dec): [d_sae, batch] x [batch, d_in]
            x_in = x if b_dec is None else x - b_dec  # one product, not a second dense term
            grad_w = _scatter_rows(rows, cols, grad, x_in, d_sae).T
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:  # column sums of G [d_sae]
            col_sums = grad.new_zeros(d_sae).index_add_(0, cols, grad)
            grad_b = col_sums if ctx.needs_input_grad[3] else None
            if ctx.needs_input_grad[4]:  # pre = (x - b_dec) @ W + ...: d b_dec = -W @ colsum
                grad_b_dec = -(weight @ col_sums)  # [d_in]
        return None, grad_x, grad_w, grad_b, grad_b_dec, None, None, None


def gather_pre(
    x: Float[Tensor, "batch d_in"],
    weight: Float[Tensor, "d_in d_sae"],
    bias: Float[Tensor, " d_sae"] | None,
    pre: Float[Tensor, "batch d_sae"],
    rows: Int[Tensor, " nnz"],
    cols: Int[Tensor, " nnz"],
    b_dec: Float[Tensor, " d_in"] | None = None,
    pre_bias: Float[Tensor, " d_sae"] | None = None,
) -> Float[Tensor, " nnz"]:
    """``((x - b_dec) @ weight + bias)[rows, cols]`` read from ``pre`` (that product,
    computed without autograd), with a backward that only touches the selected entries.

    ``bias`` (or ``None``) and ``b_dec`` (``None``: not subtracted) are given apart, not
    folded into one ``bias - b_dec @ weight``: through the folded bias autograd would add a
    second dense ``[d_in, d_sae]`` term (an outer product) to ``weight``'s gradient.

    ``pre_bias``: ``pre`` is the bare product ``x @ weight`` and the folded bias (detached)
    is added to the selected entries only, which spares a ``[batch, d_sae]`` pass."""
    return _GatherPre.apply(pre, x, weight, bias, b_dec, rows, cols, pre_bias)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx,
        values: Tensor,
        weight: Tensor,
        rows: Tensor,
        cols: Tensor,
        crow: Tensor,
    ) -> Tensor:
        values = values.to(weight.dtype)  # embedding_bag needs one dtype (autocast: bf16 in)
        ctx.save_for_backward(values, weight, rows, cols, crow)
        return torch.nn.functional.embedding_bag(
            cols, weight, crow[:-1], mode="sum", per_sample_weights=values
        )

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor):  # type: ignore[override]
        values, weight, rows, cols, crow = ctx.saved_tensors
        n = crow.numel() - 1
        grad_values = grad_w = None
        if ctx.needs_input_grad[0]:  # dvalues[e] = grad[rows[e]] . W[cols[e]]  (SDDMM)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "sparse CSR is in beta"
                pattern = torch.sparse_csr_tensor(
                    crow, cols, torch.ones_like(values), (n, weight.shape[0])
                )
                grad_values = torch.sparse.sampled_addmm(pattern, grad, weight.T, beta=0.0).values()
        if ctx.needs_input_grad[1]:  # dW = codes^T @ grad: [d_sae, batch] x [batch, d_in]
            grad_w = _scatter_rows(rows, cols, values, grad, weight.shape[0])
        return grad_values, grad_w, None, None, None


def sparse_decode(codes: SparseEntries, weight: Float[Tensor, "d_sae d_in"]) -> Tensor:
    """``codes.to_dense() @ weight`` over the active latents only (``[batch, d_in]``)."""
    crow = codes.row_pointers()
    return _SparseDecode.apply(codes.values, weight, codes.rows, codes.cols, crow)
