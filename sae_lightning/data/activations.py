"""Live activations: frozen forward up to the hook, a shuffle buffer on the device, batches.

Each activation has an id: its position in this shard's stream for the current epoch
(``group * contexts_per_forward * positions + offset``). The buffer holds ids next to the
activations, so the stream's state is small (ids, counters, RNG state) and a resumed stream
recomputes exactly the activations it held by re-running the same forward groups.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from sae_lightning.data.readers import (
    ArrayContexts,
    Mark,
    RowGroups,
    StreamedContexts,
    StreamGroups,
)
from sae_lightning.hooks import capture_activations

log = logging.getLogger(__name__)


@dataclass
class StreamState:
    """Where a stream is: enough to continue it exactly."""

    epoch: int = 0
    next_group: int = 0
    emit_left: int = 0
    pending_ids: Tensor | None = None  # [n_pending] ids held in the buffer, in emission order
    rng_state: Tensor | None = None
    batches: int = 0
    shard: tuple[int, int] = (0, 1)  # (shard, n_shards) the state belongs to
    mark: Mark | None = None  # streamed contexts: where the lowest group still needed starts

    def as_dict(self) -> dict:
        return dict(vars(self))


class ActivationStream(IterableDataset):
    """Batches ``[batch_size, d_in]`` of shuffled activations of one shard of the contexts.

    Args:
        model: frozen TransformerBridge, already on ``device``.
        contexts: token contexts ``[n_contexts, n_ctx]`` (all shards; this one takes its part):
            a tensor or :class:`ArrayContexts`, whose shard is permuted every epoch, or
            :class:`StreamedContexts`, read forward in stream order (the buffer shuffles).
        hook_name: TransformerLens hook name.
        batch_size: activations per batch.
        buffer_tokens: capacity of the shuffle buffer, in activations.
        refill_fraction: share of the buffer emitted before it is refilled (1.0: full refresh).
        contexts_per_forward: contexts per frozen forward pass.
        drop_bos: skip position 0 (the BOS token) of every context.
        seed: seeds the per-epoch context order and the buffer's shuffles.
        rank / world_size: DDP shard of this process; dataloader workers shard further.
        epochs: number of passes over the shard (None: forever).
        capture: ``tokens -> [batch, pos, d]`` activations, instead of reading ``hook_name``
            of ``model`` (a spec's ``capture``: a transcoder's two hooks, or two models).
    """

    def __init__(
        self,
        model,
        contexts: Int[Tensor, "n_contexts n_ctx"] | ArrayContexts | StreamedContexts,
        hook_name: str,
        batch_size: int,
        buffer_tokens: int,
        refill_fraction: float = 0.5,
        contexts_per_forward: int = 32,
        drop_bos: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epochs: int | None = None,
        device: str | torch.device = "cpu",
        capture: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < refill_fraction <= 1.0:
            raise ValueError(f"refill_fraction must be in (0, 1], got {refill_fraction}")
        if buffer_tokens < batch_size:
            raise ValueError(
                f"buffer_tokens={buffer_tokens} must be at least batch_size={batch_size}"
            )
        self.model, self.contexts, self.hook_name = model, contexts, hook_name
        self.capture = capture or (lambda tokens: capture_activations(model, tokens, hook_name))
        self.batch_size, self.buffer_tokens, self.refill_fraction = (
            batch_size,
            buffer_tokens,
            refill_fraction,
        )
        self.k, self.drop_bos, self.seed = contexts_per_forward, drop_bos, seed
        self.rank, self.world_size, self.epochs, self.device = (
            rank,
            world_size,
            epochs,
            torch.device(device),
        )
        self.positions = contexts.shape[1] - int(drop_bos)
        self.resume_from: StreamState | None = None
        self.history: deque[StreamState] = deque(maxlen=8)

    def _shard(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def shard_rows(self, shard: int, n_shards: int) -> Tensor:
        """Indices of the contexts that belong to ``shard`` of ``n_shards``."""
        return torch.arange(shard, len(self.contexts), n_shards)

    def _order(self, epoch: int, shard: int, n_shards: int) -> RowGroups | StreamGroups:
        """This epoch's groups of the shard: permuted rows, or the stream in its order."""
        if isinstance(self.contexts, StreamedContexts):
            return self.contexts.groups(shard, n_shards, self.k)
        mine = self.shard_rows(shard, n_shards)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return RowGroups(self.contexts, mine[torch.randperm(len(mine), generator=gen)], self.k)

    @torch.inference_mode()
    def _forward_group(self, order: RowGroups | StreamGroups, group: int) -> tuple[Tensor, Tensor]:
        tokens = order.read(group).to(self.device)
        # float32 in the buffer, whatever the frozen model's dtype
        acts = self.capture(tokens).float()
        if self.drop_bos:
            acts = acts[:, 1:]
        acts = acts.reshape(-1, acts.shape[-1])  # [k * positions, d_in]
        start = group * self.k * self.positions
        return acts, torch.arange(start, start + len(acts))

    def _recompute(self, order: RowGroups | StreamGroups, ids: Tensor) -> Tensor:
        """Activations for ``ids`` by re-running exactly the forward groups that made them."""
        per_group = self.k * self.positions
        groups = torch.unique(ids // per_group)  # sorted
        parts = [self._forward_group(order, int(g))[0] for g in groups]
        offsets = torch.tensor([0] + [len(p) for p in parts[:-1]]).cumsum(0)
        index = offsets[torch.searchsorted(groups, ids // per_group)] + ids % per_group
        return torch.cat(parts).index_select(0, index.to(self.device))

    def _lowest_group(self, ids: Tensor, next_group: int) -> int:
        """The first group a resumed stream needs: the lowest pending one, else the next."""
        return int(ids.min()) // (self.k * self.positions) if len(ids) else next_group

    def _emit_count(self, n_pending: int, exhausted: bool) -> int:
        if exhausted:
            return n_pending
        per_round = (
            int(self.refill_fraction * self.buffer_tokens) // self.batch_size * self.batch_size
        )
        return min(n_pending, max(self.batch_size, per_round))

    def __iter__(self) -> Iterator[Float[Tensor, "batch d_in"]]:
        shard, n_shards = self._shard()
        rng = torch.Generator().manual_seed(self.seed * 7919 + shard)
        state, self.resume_from = self.resume_from or StreamState(shard=(shard, n_shards)), None
        if tuple(state.shard) != (shard, n_shards):
            # a checkpoint holds rank 0's stream only; another shard cannot use it
            log.warning(
                "stream state of shard %s does not fit shard %s: this shard starts afresh",
                tuple(state.shard),
                (shard, n_shards),
            )
            state = StreamState(shard=(shard, n_shards))
        if state.rng_state is not None:
            rng.set_state(state.rng_state)
        order = self._order(state.epoch, shard, n_shards)
        order.seek(state.mark)
        ids = (
            state.pending_ids if state.pending_ids is not None else torch.empty(0, dtype=torch.long)
        )
        acts = self._recompute(order, ids) if len(ids) else None
        while self.epochs is None or state.epoch < self.epochs:
            if state.emit_left == 0:
                fresh_acts, fresh_ids = [acts] if acts is not None else [], [ids]
                n = len(ids)
                while n < self.buffer_tokens and order.has(state.next_group):
                    a, i = self._forward_group(order, state.next_group)
                    fresh_acts.append(a)
                    fresh_ids.append(i)
                    n += len(i)
                    state.next_group += 1
                if n == 0:  # shard exhausted: next epoch, new order
                    state.epoch, state.next_group = state.epoch + 1, 0
                    order = self._order(state.epoch, shard, n_shards)
                    continue
                perm = torch.randperm(n, generator=rng)
                # index_select copies whole rows; acts[perm] (advanced indexing) made the
                # refill twice as slow on CPU (benchmarks/stream_shuffle.py)
                acts = torch.cat(fresh_acts).index_select(0, perm.to(self.device))
                ids = torch.cat(fresh_ids)[perm]
                state.emit_left = self._emit_count(n, not order.has(state.next_group))
            b = min(self.batch_size, state.emit_left)
            batch, acts, ids = acts[:b], acts[b:], ids[b:]
            state.emit_left -= b
            state.batches += 1
            self.history.append(
                StreamState(
                    state.epoch,
                    state.next_group,
                    state.emit_left,
                    ids,
                    rng.get_state(),
                    state.batches,
                    state.shard,
                    order.mark(self._lowest_group(ids, state.next_group)),
                )
            )
            yield batch
            if len(ids) == 0:
                acts = None

    def state_after(self, batches: int) -> dict:
        """The state right after the ``batches``-th batch was emitted (must be recent)."""
        for snap in self.history:
            if snap.batches == batches:
                return snap.as_dict()
        have = [s.batches for s in self.history]
        raise RuntimeError(f"stream state after batch {batches} is not recorded (have {have})")

    def load_state(self, state: dict) -> None:
        self.resume_from = StreamState(**state)
