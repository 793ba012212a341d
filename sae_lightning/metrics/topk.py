"""Streaming per-feature top-k activations, with the global id of the token behind each.

Memory is ``O(n_features * k)`` whatever the number of tokens: each batch is merged into the
running top-k and then dropped. Values and token ids must be reduced together (the top-k of
one decides which ids survive), so they live in one state ``packed [n_features, k, 2]``
(float64: ``[..., 0]`` the activation, ``[..., 1]`` the token id; ids are exact below 2**53).

Its ``dist_reduce_fx`` is :func:`merge_topk`. torchmetrics calls a custom reduction with the
states of every rank stacked on a new leading dim (``_sync_dist`` all-gathers, then
``torch.stack``), and ``merge_state``/``forward`` call it on ``torch.stack([incoming,
local])``; either way it sees ``[m, n_features, k, 2]`` and must return ``[n_features, k, 2]``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torchmetrics import Metric

from sae_lightning.metrics.sparse import check_entries, counts_as_update, segment_rank

_MAX_EXACT_ID = 2**53  # float64 represents every integer below this exactly


def _select_topk(candidates: Float[Tensor, "f c 2"], k: int) -> Float[Tensor, "f k 2"]:
    """Keep, per feature, the ``k`` candidate rows with the largest value, sorted descending;
    equal values by the lower token id, so the result does not depend on batching or ranks."""
    by_id = candidates[..., 1].argsort(dim=1, stable=True)  # [f, c]
    candidates = candidates.gather(1, by_id.unsqueeze(-1).expand(-1, -1, 2))
    top = candidates[..., 0].argsort(dim=1, descending=True, stable=True)[:, :k]  # [f, k]
    return candidates.gather(1, top.unsqueeze(-1).expand(-1, -1, 2))


def merge_topk(stacked: Float[Tensor, "m f k 2"]) -> Float[Tensor, "f k 2"]:
    """Top-k per feature across ``m`` packed top-k states (ranks or metric instances).

    This is :class:`TopKActivations`' ``dist_reduce_fx``: the union of the ``m`` candidate
    lists is re-ranked by value, carrying each value's token id along with it.

    Args:
        stacked: ``m`` packed states ``[n_features, k, 2]`` stacked on dim 0.

    Returns:
        The merged packed state ``[n_features, k, 2]``, sorted by value descending.
    """
    if stacked.ndim != 4 or stacked.shape[-1] != 2:
        raise ValueError(f"expected stacked top-k states [m, f, k, 2], got {list(stacked.shape)}")
    m, f, k, _ = stacked.shape
    candidates = stacked.permute(1, 0, 2, 3).reshape(f, m * k, 2)  # [f, m*k, 2]
    return _select_topk(candidates, k)


def _topk_update(
    packed: Float[Tensor, "f k 2"], acts: Float[Tensor, "n f"], token_index: Int[Tensor, " n"]
) -> Float[Tensor, "f k 2"]:
    """Merge one batch into the running top-k (only the batch's own top-k is ever expanded)."""
    k = packed.shape[1]
    # top-k down the batch in the input's own dtype and layout (no [n, f] float64 copy or
    # strided transpose); only the small [k', f] result is converted, which is exact
    batch_top = acts.detach().topk(min(k, acts.shape[0]), dim=0)  # [k', f] each
    values = batch_top.values.T.to(packed.dtype)  # [f, k']
    ids = token_index.to(packed.dtype)[batch_top.indices.T]  # [f, k']
    batch_packed = torch.stack([values, ids], dim=-1)  # [f, k', 2]
    return _select_topk(torch.cat([packed, batch_packed], dim=1), k)


def _topk_merge_entries(
    packed: Float[Tensor, "f k 2"],
    values: Float[Tensor, " m"],
    cols: Int[Tensor, " m"],
    ids: Int[Tensor, " m"],
) -> Float[Tensor, "f k 2"]:
    """Merge sparse entries ``(value, feature, id)`` into the running top-k.

    Only entries above their feature's current k-th value can enter, and once the buffers
    fill those are few: they are ranked within their feature (one sort by value, one stable
    sort by feature) and at most ``k`` per feature are merged.
    """
    f, k, _ = packed.shape
    values = values.to(packed.dtype)
    keep = values > packed[:, -1, 0][cols]  # [m]: beats the feature's k-th value
    if not bool(keep.any()):
        return packed
    values, cols, ids = values[keep], cols[keep], ids[keep].to(packed.dtype)
    order = torch.sort(values, descending=True, stable=True).indices
    order = order[torch.sort(cols[order], stable=True).indices]  # by feature, then value desc
    values, cols, ids = values[order], cols[order], ids[order]
    rank = segment_rank(cols, f)
    top = rank < k
    incoming = torch.empty_like(packed)  # [f, k, 2], unfilled: (-inf, -1)
    incoming[..., 0], incoming[..., 1] = float("-inf"), -1.0
    incoming[cols[top], rank[top]] = torch.stack([values[top], ids[top]], dim=-1)
    return _select_topk(torch.cat([packed, incoming], dim=1), k)


class TopKActivations(Metric):
    """The ``k`` largest activations of every feature and the tokens they occurred on.

    ``token_index`` is any global integer id of a token, e.g. ``context_idx * n_ctx + pos``,
    so that the top examples can be re-materialised (with their context) after the pass.

    Entries that were never filled (fewer than ``k`` tokens seen) hold value ``-inf`` and id
    ``-1``. All values are kept, zeros included: a feature that fired on 3 tokens still
    returns ``k`` entries, so filter ``values > 0`` when only firing examples are wanted.
    Equal values are ordered by token id when states merge (batches, ranks); with
    :meth:`update_entries` fed in token order the lowest ids win, however the tokens are
    batched or sharded.

    Args:
        n_features: Number of features (columns of ``acts``).
        k: How many top activations to keep per feature.
        context_ids: Kept for the report: whether ``token_index`` encodes
            ``context_idx * n_ctx + pos`` (so contexts can be recovered) rather than an
            opaque id. It does not change the computation.

    Example:
        >>> metric = TopKActivations(n_features=2, k=2)
        >>> metric.update(torch.tensor([[1.0, 0.0], [3.0, 2.0], [2.0, 5.0]]), torch.arange(3))
        >>> values, indices = metric.compute()
        >>> values.tolist(), indices.tolist()
        ([[3.0, 2.0], [5.0, 2.0]], [[1, 2], [2, 1]])
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    packed: Tensor

    def __init__(self, n_features: int, k: int, context_ids: bool = True) -> None:
        super().__init__()
        if n_features < 1:
            raise ValueError(f"n_features must be a positive int, got {n_features!r}")
        if k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self.n_features = n_features
        self.k = k
        self.context_ids = context_ids
        default = torch.empty(n_features, k, 2, dtype=torch.float64)
        default[..., 0] = float("-inf")
        default[..., 1] = -1.0
        self.add_state("packed", default=default, dist_reduce_fx=merge_topk)

    def update(self, acts: Float[Tensor, "n n_features"], token_index: Int[Tensor, " n"]) -> None:
        """Merge a batch of activations; ``token_index[i]`` is the global id of row ``i``."""
        if acts.ndim != 2 or acts.shape[1] != self.n_features:
            raise ValueError(f"acts must have shape [n, {self.n_features}], got {list(acts.shape)}")
        if token_index.shape != (acts.shape[0],):
            raise ValueError(
                f"token_index must have shape [{acts.shape[0]}] (one id per row of acts), "
                f"got {list(token_index.shape)}"
            )
        if token_index.is_floating_point() or token_index.is_complex():
            raise ValueError(f"token_index must be an integer tensor, got {token_index.dtype}")
        if token_index.numel():
            lo, hi = (int(v) for v in torch.aminmax(token_index))
            if lo < 0 or hi >= _MAX_EXACT_ID:
                raise ValueError(f"token_index must lie in [0, 2**53), got range [{lo}, {hi}]")
        self.packed = _topk_update(self.packed, acts, token_index)

    @counts_as_update
    def update_entries(
        self, values: Float[Tensor, " m"], cols: Int[Tensor, " m"], token_index: Int[Tensor, " m"]
    ) -> None:
        """Merge sparse entries: ``values[i]`` of feature ``cols[i]`` on token ``token_index[i]``.

        Entries left out count as activations that cannot enter the top-k (e.g. zeros): the
        result equals :meth:`update` on the dense matrix wherever the top-k values are
        ``> 0``; slots no entry filled stay ``(-inf, -1)``.
        """
        check_entries(values=values, cols=cols, token_index=token_index)
        if cols.numel():
            lo, hi = (int(v) for v in torch.aminmax(cols))
            if lo < 0 or hi >= self.n_features:
                raise ValueError(f"cols must lie in [0, {self.n_features}), got [{lo}, {hi}]")
        self.packed = _topk_merge_entries(self.packed, values, cols, token_index)

    def merge_state(self, incoming_state: dict[str, Tensor] | Metric) -> None:
        """Merge another instance's top-k (as a DDP rank would), via :func:`merge_topk`.

        torchmetrics' own ``merge_state`` does not clear the cached ``compute()`` result, so
        a ``compute`` before the merge would otherwise be returned again after it.
        """
        super().merge_state(incoming_state)
        self._computed = None

    def compute(self) -> tuple[Float[Tensor, "n_features k"], Int[Tensor, "n_features k"]]:
        """``(values, indices)``, each ``[n_features, k]``, sorted by value descending."""
        return self.packed[..., 0].clone(), self.packed[..., 1].long()
