"""Context readers: how the activation stream gets its token contexts, group by group.

Two kinds of context rows feed :class:`~sae_lightning.data.activations.ActivationStream`:

- in memory: a tensor ``[n_contexts, n_ctx]`` or an :class:`ArrayContexts` over a (memory
  mapped) ``.npy`` array, read row by row on demand. The stream permutes a shard's rows every
  epoch and reads them through :class:`RowGroups`.
- streamed: :class:`StreamedContexts`, read forward only, in stream order (no permutation:
  the activation shuffle buffer does the shuffling). :class:`StreamGroups` reads a shard's
  groups; it remembers where each group started (a *mark*, e.g. a dataset row and a token
  offset in it) so that a resumed stream re-opens the source at the lowest group it still
  needs instead of reading everything before it.

Shard ``s`` of ``n`` takes every ``n``-th context (``s, s + n, ...``); group ``g`` of a shard
is its contexts ``g * k .. g * k + k - 1`` (``k`` contexts per forward).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from sae_lightning.data.corpus import CorpusError

Mark = tuple[int, ...]  # where a stream resumes, e.g. (row, token offset in the row's piece)
OpenAt = Callable[[Mark], Iterator[tuple[Mark, Tensor]]]  # (mark of the context, [n_ctx])
Split = Literal["train", "val"]


def check_split(split: str) -> None:
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")


def n_val_contexts(n_contexts: int, val_fraction: float) -> int:
    """Validation contexts among ``n_contexts``: ``val_fraction`` of them, at least one."""
    n_val = max(1, int(round(n_contexts * val_fraction)))
    if n_contexts <= n_val:
        raise CorpusError(
            f"only {n_contexts} contexts: too few to hold out {val_fraction:.0%} for validation"
        )
    return n_val


def check_token_range(low: int, high: int, d_vocab: int, where: str) -> None:
    """Raise unless every id in ``[low, high]`` is a row of the model's embedding."""
    if high >= d_vocab:
        raise CorpusError(
            f"{where} holds token id {high} (the largest), but the model's vocabulary has "
            f"{d_vocab} ids (valid: 0..{d_vocab - 1}): the data was tokenized for another model"
        )
    if low < 0:
        raise CorpusError(f"{where} holds negative token id {low}; token ids must be >= 0")


class ArrayContexts:
    """Contexts read on demand from a (memory-mapped) integer array.

    A 1-D array is a token stream cut into pieces of ``n_ctx - 1`` tokens, each preceded by
    BOS (as :func:`sae_lightning.data.tokens.make_contexts`); a 2-D array ``[n, n_ctx]`` is
    used as it is. Only contexts ``start .. stop - 1`` belong to this view. Indexing with a
    slice, an int or an index tensor returns an int64 tensor ``[rows, n_ctx]``.
    """

    def __init__(self, array: np.ndarray, n_ctx: int, bos: int, start: int, stop: int) -> None:
        self.array, self.n_ctx, self.bos, self.start, self.stop = array, n_ctx, bos, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.n_ctx)

    def __getitem__(self, key: Tensor | slice | int) -> Int[Tensor, "rows n_ctx"]:
        rows = np.arange(len(self))[key] if not isinstance(key, Tensor) else key.numpy()
        rows = np.atleast_1d(rows) + self.start
        if self.array.ndim == 2:
            return torch.from_numpy(np.asarray(self.array[rows], dtype=np.int64))
        body = self.n_ctx - 1
        index = rows[:, None] * body + np.arange(body)  # [rows, body]
        out = np.empty((len(rows), self.n_ctx), dtype=np.int64)
        out[:, 0] = self.bos
        out[:, 1:] = self.array[index.reshape(-1)].reshape(len(rows), body)
        return torch.from_numpy(out)


class RowGroups:
    """Groups of an in-memory shard in a given row order (the stream's permuted epoch)."""

    def __init__(self, contexts: Tensor | ArrayContexts, order: Tensor, k: int) -> None:
        self.contexts, self.order, self.k = contexts, order, k

    def has(self, group: int) -> bool:
        return group * self.k < len(self.order)

    def read(self, group: int) -> Int[Tensor, "k n_ctx"]:
        return self.contexts[self.order[group * self.k : (group + 1) * self.k]]

    def mark(self, group: int) -> Mark | None:
        return None  # random access: nothing to remember

    def seek(self, mark: Mark | None) -> None:
        pass


def cut_contexts(
    pieces: Iterable[tuple[int, np.ndarray]], body: int, offset: int = 0
) -> Iterator[tuple[Mark, np.ndarray]]:
    """Cut consecutive pieces ``(row, tokens)`` into bodies of ``body`` tokens.

    Yields ``((row, offset), tokens)`` where ``(row, offset)`` is where the body starts; the
    first piece is read from ``offset``. A remainder shorter than ``body`` is dropped.
    """
    queue: deque[list] = deque()  # [row, tokens, used]
    have = 0
    for row, tokens in pieces:
        queue.append([row, tokens, offset])
        have += len(tokens) - offset
        offset = 0
        while have >= body:
            mark, parts, need = (queue[0][0], queue[0][2]), [], body
            while need:
                head = queue[0]
                take = min(need, len(head[1]) - head[2])
                parts.append(head[1][head[2] : head[2] + take])
                head[2] += take
                need -= take
                if head[2] == len(head[1]):
                    queue.popleft()
            have -= body
            yield mark, np.concatenate(parts)


class StreamedContexts:
    """Up to ``limit`` contexts of a forward-only stream that starts at ``start``.

    ``open_at(mark)`` yields ``(mark, context)`` pairs from a mark on. ``contexts[:n]`` reads
    the first ``n`` contexts; :meth:`groups` is the training stream's view of one shard.
    """

    def __init__(self, open_at: OpenAt, start: Mark, limit: int, n_ctx: int, name: str) -> None:
        self.open_at, self.start, self.limit, self.n_ctx, self.name = (
            open_at,
            start,
            limit,
            n_ctx,
            name,
        )

    @property
    def shape(self) -> tuple[None, int]:
        return (None, self.n_ctx)  # the number of contexts is known only once read

    def iterate(self, mark: Mark, first: int) -> Iterator[tuple[int, Mark, Tensor]]:
        """``(index, mark, context)`` from ``mark``, which is where context ``first`` starts."""
        if first >= self.limit:
            return
        for index, (m, ctx) in enumerate(self.open_at(mark), start=first):
            yield index, m, ctx
            if index + 1 >= self.limit:
                return

    def __getitem__(self, key: slice) -> Int[Tensor, "rows n_ctx"]:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError(f"a streamed source reads slices [start:stop] only, got {key!r}")
        start, stop = key.start or 0, self.limit if key.stop is None else key.stop
        rows = []
        for index, _, ctx in self.iterate(self.start, 0):
            if index >= stop:
                break
            if index >= start:
                rows.append(ctx)
        return torch.stack(rows) if rows else torch.empty(0, self.n_ctx, dtype=torch.long)

    def groups(self, shard: int, n_shards: int, k: int) -> StreamGroups:
        return StreamGroups(self, shard, n_shards, k)


class StreamGroups:
    """Groups of one shard of a :class:`StreamedContexts`, read forward.

    Reading a group behind the current position re-opens the stream at the nearest mark
    before it (the split's start if none is known) and reads forward from there.
    """

    def __init__(self, contexts: StreamedContexts, shard: int, n_shards: int, k: int) -> None:
        self.contexts, self.shard, self.n_shards, self.k = contexts, shard, n_shards, k
        self._marks: dict[int, Mark] = {0: contexts.start}  # group -> where its window starts
        self._it: Iterator[Tensor] | None = None
        self._next = 0  # the group self._it yields next
        self._ahead: tuple[int, Tensor | None] | None = None

    def _windows(self, group: int) -> Iterator[Tensor]:
        """The shard's groups from ``group`` on; records where each window starts."""
        window = self.k * self.n_shards  # contexts of all shards that make one group
        rows: list[Tensor] = []
        for index, mark, ctx in self.contexts.iterate(self._marks[group], group * window):
            if index % window == 0:
                self._marks[index // window] = mark
            if index % self.n_shards == self.shard:
                rows.append(ctx)
            if (index + 1) % window == 0:
                yield torch.stack(rows)
                rows = []
        if rows:
            yield torch.stack(rows)

    def read(self, group: int) -> Int[Tensor, "k n_ctx"] | None:
        """The ``group``-th group of this shard, or None past the end of the stream."""
        if self._ahead is not None and self._ahead[0] == group:
            return self._ahead[1]
        if self._it is None or group < self._next:
            self._next = max(g for g in self._marks if g <= group)
            self._it = self._windows(self._next)
        tokens = None
        while self._next <= group:
            tokens = next(self._it, None)
            if tokens is None:
                break
            self._next += 1
        self._ahead = (group, tokens)
        if tokens is None and group == 0:
            raise CorpusError(
                f"{self.contexts.name} has no contexts for shard {self.shard} of {self.n_shards}"
            )
        return tokens

    def has(self, group: int) -> bool:
        return self.read(group) is not None

    def mark(self, group: int) -> Mark | None:
        """``(group, *mark)`` to resume at ``group`` (known once the group was read)."""
        for old in [g for g in self._marks if 0 < g < group]:
            del self._marks[old]  # a resumed stream never needs a group below ``group``
        return (group, *self._marks[group]) if group in self._marks else None

    def seek(self, mark: Mark | None) -> None:
        """Remember a mark from :meth:`mark` (e.g. from a checkpoint)."""
        if mark is not None:
            self._marks[int(mark[0])] = tuple(int(m) for m in mark[1:])
