"""Token sources: each turns its data into BOS-prefixed contexts ``[n_contexts, n_ctx]``.

Every source splits off a held-out validation part: the corpus by a stable hash of the
document name, the others by taking the first ``val_fraction`` of their contexts, so that a
streaming dataset needs no second pass (see :class:`~sae_lightning.data.hf.HFDatasetSource`).

A source has ``contexts(split, tokenizer, n_ctx, d_vocab=None)``, the split's contexts as a
tensor, and ``reader(...)``, what the training stream reads: the same tensor, contexts read
on demand from a memory-mapped file, or a forward-only stream
(:mod:`sae_lightning.data.readers`). ``d_vocab`` is the model's vocabulary size (None: the
tokenizer's): token ids outside ``0..d_vocab - 1`` are refused with the file or dataset named.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from jaxtyping import Int
from torch import Tensor

from sae_lightning.data.corpus import CorpusError, Document, load_documents, split_documents
from sae_lightning.data.hf import HFDatasetSource  # noqa: F401  (re-exported)
from sae_lightning.data.readers import (
    ArrayContexts,
    Split,
    check_split,
    check_token_range,
    n_val_contexts,
)
from sae_lightning.data.tokens import encode_documents, make_contexts

log = logging.getLogger(__name__)
Contexts = Int[Tensor, "n_contexts n_ctx"]
SCAN_CHUNK = 1 << 22  # ids per read when a token file is checked


class CorpusSource:
    """The embedded corpus ("stdlib"), a folder of .py/.txt/.md files, or a .jsonl file."""

    def __init__(
        self, corpus: str = "stdlib", text_field: str = "text", val_fraction: float = 0.05
    ) -> None:
        self.corpus, self.text_field, self.val_fraction = corpus, text_field, val_fraction
        self._docs: list[Document] | None = None  # read once, split per call

    def contexts(self, split: Split, tokenizer, n_ctx: int, d_vocab: int | None = None) -> Contexts:
        check_split(split)
        if self._docs is None:
            self._docs = load_documents(self.corpus, self.text_field)
        docs = split_documents(self._docs, split, self.val_fraction)
        if not docs:
            raise CorpusError(
                f"corpus {self.corpus!r} has no {split} documents at "
                f"val_fraction={self.val_fraction}"
            )
        contexts = make_contexts(encode_documents(docs, tokenizer), n_ctx, tokenizer.bos_token_id)
        where = f"corpus {self.corpus!r} tokenized with {type(tokenizer).__name__}"
        check_token_range(
            int(contexts.min()), int(contexts.max()), d_vocab or len(tokenizer), where
        )
        return contexts

    reader = contexts  # in memory: the stream permutes its rows


class TokenFileSource:
    """A pre-tokenized ``.npy`` file, read as a memory map: a 1-D token stream, which is cut
    into BOS-prefixed contexts of ``n_ctx`` (as :func:`make_contexts`), or a 2-D
    ``[n_contexts, n_ctx]`` array used as it is. The first ``val_fraction`` of the contexts is
    validation. Contexts are read from the file when the stream needs them; the file is
    checked once (integer ids within the model's vocabulary) by reading it in chunks.
    """

    def __init__(self, path: str, val_fraction: float = 0.05) -> None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.path, self.val_fraction = Path(path), val_fraction
        self._range: tuple[int, int] | None = None  # (smallest, largest) id in the file

    def _open(self, n_ctx: int) -> np.ndarray:
        name = str(self.path)
        if not self.path.is_file():
            raise CorpusError(f"token file {name!r} does not exist")
        try:
            array = np.load(self.path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as err:
            raise CorpusError(
                f"token file {name!r} cannot be read as a .npy array ({err}): is it truncated "
                "or not written by numpy.save?"
            ) from None
        if not np.issubdtype(array.dtype, np.integer):
            raise CorpusError(f"token file {name!r} holds {array.dtype}, expected integer ids")
        if array.ndim not in (1, 2) or (array.ndim == 2 and array.shape[1] != n_ctx):
            raise CorpusError(
                f"token file {name!r} has shape {array.shape}; expected [n_tokens] or "
                f"[n_contexts, {n_ctx}]"
            )
        return array

    def _id_range(self, array: np.ndarray) -> tuple[int, int]:
        """Smallest and largest id, read in chunks (the file is never held in memory)."""
        if self._range is None:
            low, high = np.iinfo(np.int64).max, np.iinfo(np.int64).min
            with open(self.path, "rb") as f:
                f.seek(array.offset)
                for _ in range(0, array.size, SCAN_CHUNK):
                    chunk = np.fromfile(f, dtype=array.dtype, count=SCAN_CHUNK)
                    low, high = min(low, int(chunk.min())), max(high, int(chunk.max()))
            self._range = (low, high)
        return self._range

    def reader(
        self, split: Split, tokenizer, n_ctx: int, d_vocab: int | None = None
    ) -> ArrayContexts:
        """The split's contexts, read from the memory-mapped file on demand."""
        check_split(split)
        if n_ctx < 2:
            raise ValueError(f"n_ctx must be at least 2 (BOS plus one token), got {n_ctx}")
        array = self._open(n_ctx)
        n = len(array) // (n_ctx - 1) if array.ndim == 1 else len(array)
        if n == 0:
            raise CorpusError(
                f"token file {str(self.path)!r} holds {array.size} tokens: fewer than one "
                f"context of {n_ctx}"
            )
        check_token_range(
            *self._id_range(array), d_vocab or len(tokenizer), f"token file {str(self.path)!r}"
        )
        n_val = n_val_contexts(n, self.val_fraction)
        start, stop = (0, n_val) if split == "val" else (n_val, n)
        return ArrayContexts(array, n_ctx, tokenizer.bos_token_id, start, stop)

    def contexts(self, split: Split, tokenizer, n_ctx: int, d_vocab: int | None = None) -> Contexts:
        """The split's contexts as one tensor (copied from the file)."""
        return self.reader(split, tokenizer, n_ctx, d_vocab)[:]
