"""Token sources: each turns its data into BOS-prefixed contexts ``[n_contexts, n_ctx]``.

Every source splits off a held-out validation part: the corpus by a stable hash of the
document name, the others by taking the first ``val_fraction`` (or ``val_contexts``) of
their contexts, so that a streaming dataset needs no second pass.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from sae_lightning.data.tokens import encode_documents, make_contexts
from sae_lightning.hub import hub_unavailable, is_hub_error
from sae_lightning.toy.corpus import CorpusError, Document, load_documents, split_documents

log = logging.getLogger(__name__)
Split = Literal["train", "val"]
Contexts = Int[Tensor, "n_contexts n_ctx"]


def _check_split(split: str) -> None:
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")


def _split_contexts(contexts: Contexts, split: Split, val_fraction: float) -> Contexts:
    """First ``val_fraction`` of the contexts (at least one) is validation, the rest train."""
    n_val = max(1, int(round(len(contexts) * val_fraction)))
    if len(contexts) <= n_val:
        raise CorpusError(
            f"only {len(contexts)} contexts: too few to hold out {val_fraction:.0%} for validation"
        )
    return contexts[:n_val] if split == "val" else contexts[n_val:]


class CorpusSource:
    """The embedded corpus ("stdlib"), a folder of .py/.txt/.md files, or a .jsonl file."""

    def __init__(
        self, corpus: str = "stdlib", text_field: str = "text", val_fraction: float = 0.05
    ) -> None:
        self.corpus, self.text_field, self.val_fraction = corpus, text_field, val_fraction
        self._docs: list[Document] | None = None  # read once, split per call

    def contexts(self, split: Split, tokenizer, n_ctx: int) -> Contexts:
        _check_split(split)
        if self._docs is None:
            self._docs = load_documents(self.corpus, self.text_field)
        docs = split_documents(self._docs, split, self.val_fraction)
        if not docs:
            raise CorpusError(
                f"corpus {self.corpus!r} has no {split} documents at "
                f"val_fraction={self.val_fraction}"
            )
        return make_contexts(encode_documents(docs, tokenizer), n_ctx, tokenizer.bos_token_id)


class TokenFileSource:
    """A pre-tokenized ``.npy`` file (read as a memory map): a 1-D token stream, which is cut
    into contexts, or a 2-D ``[n_contexts, n_ctx]`` array used as it is."""

    def __init__(self, path: str, val_fraction: float = 0.05) -> None:
        self.path, self.val_fraction = Path(path), val_fraction

    def contexts(self, split: Split, tokenizer, n_ctx: int) -> Contexts:
        _check_split(split)
        if not self.path.is_file():
            raise CorpusError(f"token file {str(self.path)!r} does not exist")
        array = np.load(self.path, mmap_mode="r")
        if not np.issubdtype(array.dtype, np.integer):
            raise CorpusError(
                f"token file {str(self.path)!r} holds {array.dtype}, expected integer ids"
            )
        if array.ndim == 1:
            contexts = make_contexts(
                torch.from_numpy(np.asarray(array, dtype=np.int64)), n_ctx, tokenizer.bos_token_id
            )
        elif array.ndim == 2 and array.shape[1] == n_ctx:
            contexts = torch.from_numpy(np.asarray(array, dtype=np.int64))
        else:
            raise CorpusError(
                f"token file {str(self.path)!r} has shape {array.shape}; expected [n_tokens] or "
                f"[n_contexts, {n_ctx}]"
            )
        return _split_contexts(contexts, split, self.val_fraction)


class HFDatasetSource:
    """A Hugging Face ``datasets`` dataset, streamed: a text column is tokenized, a token
    column (``tokens_column``) is used as it is. Reads at most ``max_tokens`` tokens."""

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
        self.path, self.name, self.split = path, name, split
        self.text_column, self.tokens_column = text_column, tokens_column
        self.max_tokens, self.val_fraction, self.streaming = max_tokens, val_fraction, streaming
        self._cache: tuple[Any, Tensor] | None = None  # (tokenizer, token stream)

    def _load(self):
        from datasets import load_dataset

        try:
            return load_dataset(self.path, self.name, split=self.split, streaming=self.streaming)
        except Exception as err:  # noqa: BLE001  (only hub errors are rewritten)
            if is_hub_error(err):
                raise hub_unavailable(
                    "dataset", self.path, err, "the embedded corpus (data=corpus)"
                ) from None
            raise

    def _stream(self, tokenizer) -> Tensor:
        pieces, total = [], 0
        column = self.tokens_column or self.text_column
        for row in self._load():
            if column not in row:
                raise CorpusError(
                    f"dataset {self.path!r} has no column {column!r}; it has {sorted(row)}"
                )
            ids = (
                row[column]
                if self.tokens_column
                else tokenizer(row[column], add_special_tokens=False)["input_ids"]
            )
            pieces.append(torch.tensor([tokenizer.bos_token_id, *ids], dtype=torch.long))
            total += len(ids) + 1
            if total >= self.max_tokens:
                break
        if not pieces:
            raise CorpusError(f"dataset {self.path!r} split {self.split!r} is empty")
        return torch.cat(pieces)[: self.max_tokens]

    def contexts(self, split: Split, tokenizer, n_ctx: int) -> Contexts:
        _check_split(split)
        # the train and val calls share one read of the dataset (a network stream)
        if self._cache is None or self._cache[0] is not tokenizer:
            self._cache = (tokenizer, self._stream(tokenizer))
        contexts = make_contexts(self._cache[1], n_ctx, tokenizer.bos_token_id)
        return _split_contexts(contexts, split, self.val_fraction)
