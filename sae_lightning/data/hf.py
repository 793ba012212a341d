"""``HFDatasetSource``: a Hugging Face ``datasets`` dataset as token contexts.

``path`` is a hub name, a folder written by ``Dataset.save_to_disk`` /
``DatasetDict.save_to_disk``, or local ``.json`` / ``.jsonl`` / ``.parquet`` files (one file,
a glob such as ``data/*.jsonl``, or a folder of them). Rows are read in order; each row's
tokens, preceded by BOS, are appended to one token stream that is cut into contexts (as
:func:`sae_lightning.data.tokens.make_contexts`). With ``streaming=True`` the training
stream reads the contexts forward, never holding more than a group of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from sae_lightning.data.corpus import CorpusError
from sae_lightning.data.files import dataset_builder, local_data
from sae_lightning.data.readers import (
    Mark,
    OpenAt,
    Split,
    StreamedContexts,
    check_split,
    check_token_range,
    cut_contexts,
    n_val_contexts,
)
from sae_lightning.hub import cached_dataset_files, hub_unavailable, is_hub_error

ENCODE_ROWS = 64  # rows tokenized together


class HFDatasetSource:
    """Token contexts from a Hugging Face dataset: a text column, tokenized, or a column of
    token ids (``tokens_column``), used as it is.

    Validation is the first ``val_fraction`` of the contexts that ``max_tokens`` allows
    (``round(val_fraction * (max_tokens // (n_ctx - 1)))`` contexts), a count known before
    anything is read, so a stream needs no second pass; training is the rest, up to
    ``max_tokens``. A dataset that holds no more contexts than that validation share is split
    by its own length instead (its first ``val_fraction`` is validation).

    Args:
        path: hub name, save_to_disk folder, or local json/jsonl/parquet file(s) (glob, folder).
        name: hub configuration name (None for local data).
        split: split of a hub dataset or of a DatasetDict folder.
        text_column: column of texts, tokenized with the model's tokenizer.
        tokens_column: column of token ids, used as they are (then ``text_column`` is unused).
        max_tokens: tokens read at most (train and validation together).
        val_fraction: share of the ``max_tokens`` budget held out for validation.
        streaming: read forward without holding the dataset (False: all contexts in memory).
    """

    def __init__(
        self,
        path: str,
        name: str | None = None,
        split: str = "train",
        text_column: str = "text",
        tokens_column: str | None = None,
        max_tokens: int = 2_000_000,
        val_fraction: float = 0.05,
        streaming: bool = True,
    ) -> None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
        self.path, self.name, self.split = path, name, split
        self.text_column, self.tokens_column = text_column, tokens_column
        self.max_tokens, self.val_fraction, self.streaming = max_tokens, val_fraction, streaming
        self._dataset: Any = None
        self._cache: tuple[tuple, Tensor, int] | None = None  # (key, all contexts, n_val)
        self._splits: dict[tuple, tuple[int, Mark]] = {}  # key -> (n_val, where train starts)

    def _load(self) -> Any:
        """The dataset (a ``datasets`` Dataset / IterableDataset, or any iterable of rows)."""
        from datasets import load_dataset

        local = local_data(self.path)
        if local is not None and self.name is not None:
            raise ValueError(
                f"name={self.name!r} selects a configuration of a hub dataset; local data "
                f"{self.path!r} has none: set data.source.name=null"
            )
        if local is not None and local[0] == "disk":
            return self._from_disk(local[1])
        if local is not None:
            try:
                return load_dataset(
                    local[0], data_files=local[1], split=self.split, streaming=self.streaming
                )
            except Exception as err:  # noqa: BLE001  (a user's file: name it, keep it short)
                raise CorpusError(
                    f"cannot read {self.path!r} as {local[0]} files ({type(err).__name__}: "
                    f"{str(err)[:300]})"
                ) from None
        try:
            return load_dataset(self.path, self.name, split=self.split, streaming=self.streaming)
        except Exception as err:  # noqa: BLE001  (only hub errors are rewritten)
            if not is_hub_error(err):
                raise
            cached = cached_dataset_files(self.path, self.split)  # the hub cache, offline
            if cached is None:
                raise hub_unavailable(
                    "dataset", self.path, err, "the embedded corpus (data=corpus)"
                ) from None
        builder = dataset_builder(cached, self.path)[0]
        return load_dataset(builder, data_files=cached, split="train", streaming=self.streaming)

    def _from_disk(self, folder: Path) -> Any:
        from datasets import DatasetDict, load_from_disk

        try:
            data = load_from_disk(str(folder))
        except (OSError, ValueError) as err:
            raise CorpusError(f"cannot read the datasets folder {str(folder)!r}: {err}") from None
        if isinstance(data, DatasetDict):
            if self.split not in data:
                raise CorpusError(
                    f"datasets folder {str(folder)!r} has no split {self.split!r}; its splits: "
                    f"{sorted(data)}"
                )
            data = data[self.split]
        return data.to_iterable_dataset() if self.streaming else data

    @property
    def column(self) -> str:
        return self.tokens_column or self.text_column

    def _rows(self, start: int) -> Iterator[tuple[int, Any]]:
        """``(row index, value of the column)`` from row ``start`` on."""
        if self._dataset is None:
            self._dataset = self._load()
        data = self._dataset
        names = getattr(data, "column_names", None)
        if names is not None and self.column not in names:
            raise CorpusError(
                f"dataset {self.path!r} has no column {self.column!r}; its columns: {sorted(names)}"
            )
        if start:
            data = (
                data.skip(start) if hasattr(data, "skip") else itertools.islice(data, start, None)
            )
        seen = 0
        for seen, row in enumerate(data, start=1):
            if self.column not in row:
                raise CorpusError(
                    f"dataset {self.path!r} has no column {self.column!r}; its columns: "
                    f"{sorted(row)}"
                )
            yield start + seen - 1, row[self.column]
        if start == 0 and seen == 0:
            raise CorpusError(f"dataset {self.path!r} (split {self.split!r}) is empty: no rows")

    def _pieces(self, tokenizer, d_vocab: int, start: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(row, [BOS, *ids])`` from row ``start`` on, ids checked against ``d_vocab`` (a
        pre-tokenized row that starts with BOS already is not given a second)."""
        rows, bos = self._rows(start), tokenizer.bos_token_id
        while batch := list(itertools.islice(rows, ENCODE_ROWS)):
            for row, ids in zip([r for r, _ in batch], self._encode(batch, tokenizer), strict=True):
                where = f"dataset {self.path!r} (column {self.column!r}, row {row})"
                if len(ids):
                    check_token_range(int(ids.min()), int(ids.max()), d_vocab, where)
                if self.tokens_column is not None and len(ids) and ids[0] == bos:
                    yield row, ids  # a pre-tokenized row that starts with BOS keeps its own
                else:
                    yield row, np.concatenate([[bos], ids]).astype(np.int64)

    def _encode(self, batch: list[tuple[int, Any]], tokenizer) -> list[np.ndarray]:
        if self.tokens_column is None:
            bad = [(r, type(v).__name__) for r, v in batch if not isinstance(v, str)]
            if bad:
                raise CorpusError(
                    f"dataset {self.path!r} column {self.column!r} row {bad[0][0]} holds "
                    f"{bad[0][1]}, not text (set tokens_column for token ids)"
                )
            ids = tokenizer([v for _, v in batch], add_special_tokens=False)["input_ids"]
            return [np.asarray(i, dtype=np.int64) for i in ids]
        out = []
        for row, value in batch:
            ids = np.asarray(value if value is not None else [])
            if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
                raise CorpusError(
                    f"dataset {self.path!r} column {self.column!r} row {row} holds "
                    f"{ids.dtype} of shape {ids.shape}, expected a list of integer token ids"
                )
            out.append(ids.astype(np.int64))
        return out

    def _opener(self, tokenizer, n_ctx: int, d_vocab: int) -> OpenAt:
        if n_ctx < 2:
            raise ValueError(f"n_ctx must be at least 2 (BOS plus one token), got {n_ctx}")
        bos = tokenizer.bos_token_id

        def open_at(mark: Mark) -> Iterator[tuple[Mark, Tensor]]:
            row, offset = mark
            pieces = self._pieces(tokenizer, d_vocab, row)
            for at, body in cut_contexts(pieces, n_ctx - 1, offset):
                yield at, torch.from_numpy(np.concatenate([[bos], body]))

        return open_at

    def _budget(self, n_ctx: int) -> tuple[int, int]:
        """(contexts max_tokens allows, validation contexts among them)."""
        limit = self.max_tokens // (n_ctx - 1)
        if limit < 2:
            raise ValueError(
                f"max_tokens={self.max_tokens} is less than two contexts of {n_ctx} tokens"
            )
        return limit, max(1, int(round(limit * self.val_fraction)))

    def _n_val(self, n_contexts: int, budget: int) -> int:
        if n_contexts == 0:
            raise CorpusError(
                f"dataset {self.path!r} (split {self.split!r}) holds no complete context: its "
                f"{self.column!r} column has too few tokens"
            )
        return budget if n_contexts > budget else n_val_contexts(n_contexts, self.val_fraction)

    def _all(self, tokenizer, n_ctx: int, d_vocab: int) -> tuple[Tensor, int]:
        """Every context up to ``max_tokens`` (read once for both splits), and ``n_val``."""
        key = (id(tokenizer), n_ctx, d_vocab)
        if self._cache is None or self._cache[0] != key:
            limit, budget = self._budget(n_ctx)
            opener = self._opener(tokenizer, n_ctx, d_vocab)
            contexts = StreamedContexts(opener, (0, 0), limit, n_ctx, self.path)[:limit]
            self._cache = (key, contexts, self._n_val(len(contexts), budget))
        return self._cache[1], self._cache[2]

    def _split_point(self, tokenizer, n_ctx: int, d_vocab: int) -> tuple[int, Mark]:
        """(validation contexts, where training starts), from reading the validation part."""
        key = (id(tokenizer), n_ctx, d_vocab)
        if key not in self._splits:
            open_at = self._opener(tokenizer, n_ctx, d_vocab)
            _, budget = self._budget(n_ctx)
            seen, start = 0, (0, 0)
            for mark, _ in itertools.islice(open_at((0, 0)), budget + 1):
                seen, start = seen + 1, mark  # at the end: where context `budget` starts
            n_val = self._n_val(seen, budget)
            if seen <= budget:  # a short dataset, split by its length: re-read its start
                start = next(itertools.islice(open_at((0, 0)), n_val, None))[0]
            self._splits[key] = (n_val, start)
        return self._splits[key]

    def contexts(
        self, split: Split, tokenizer, n_ctx: int, d_vocab: int | None = None
    ) -> Int[Tensor, "n_contexts n_ctx"]:
        """The split's contexts in memory (one read of the dataset serves both splits)."""
        check_split(split)
        contexts, n_val = self._all(tokenizer, n_ctx, d_vocab or len(tokenizer))
        return contexts[:n_val] if split == "val" else contexts[n_val:]

    def reader(
        self, split: Split, tokenizer, n_ctx: int, d_vocab: int | None = None
    ) -> Tensor | StreamedContexts:
        """The split's contexts for the training stream: streamed, or in memory."""
        if not self.streaming:
            return self.contexts(split, tokenizer, n_ctx, d_vocab)
        check_split(split)
        d_vocab = d_vocab or len(tokenizer)
        n_val, train_start = self._split_point(tokenizer, n_ctx, d_vocab)
        open_at, name = self._opener(tokenizer, n_ctx, d_vocab), f"dataset {self.path!r} ({split})"
        if split == "val":
            return StreamedContexts(open_at, (0, 0), n_val, n_ctx, name)
        limit, _ = self._budget(n_ctx)
        return StreamedContexts(open_at, train_start, limit - n_val, n_ctx, name)
