"""Documents -> one token stream -> fixed-length contexts that start with BOS."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from sae_lightning.data.corpus import CorpusError, Document
from sae_lightning.data.token_cache import cached_tokens


def encode_documents(
    docs: Sequence[Document], tokenizer, batch_size: int = 256
) -> Int[Tensor, " n_tokens"]:
    """Concatenate the documents' tokens, each document preceded by the BOS/EOT token
    (read from the token cache when this corpus was tokenized before: ``token_cache``)."""
    if not docs:
        raise CorpusError("cannot tokenize an empty list of documents")
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no BOS token to separate documents"
        )

    def encode() -> Int[Tensor, " n_tokens"]:
        pieces: list[Tensor] = []
        for start in range(0, len(docs), batch_size):
            texts = [d.text for d in docs[start : start + batch_size]]
            for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
                pieces.append(torch.tensor([bos, *ids], dtype=torch.long))
        return torch.cat(pieces)

    return cached_tokens(docs, tokenizer, encode)  # the same corpus is tokenized once


def make_contexts(
    stream: Int[Tensor, " n_tokens"], n_ctx: int, bos_token_id: int
) -> Int[Tensor, "n_contexts n_ctx"]:
    """Cut the stream into pieces of n_ctx - 1 tokens and put BOS in front of each.

    The remainder that does not fill a whole context is dropped.
    """
    if n_ctx < 2:
        raise ValueError(f"n_ctx must be at least 2 (BOS plus one token), got {n_ctx}")
    body = n_ctx - 1
    n = stream.numel() // body
    if n == 0:
        raise CorpusError(
            f"token stream of {stream.numel()} tokens is shorter than one context of {n_ctx}"
        )
    chunks = stream[: n * body].view(n, body)
    bos = torch.full((n, 1), bos_token_id, dtype=stream.dtype)
    return torch.cat([bos, chunks], dim=1)
