"""A content-addressed cache of tokenized documents, so that a run does not re-tokenize the
same corpus (the embedded stdlib corpus: ~10 s of CPU per run, every training and analysis).

An entry is named by a hash of everything the tokens depend on: the tokenizer's full
serialisation (vocabulary, merges, normaliser, pre-tokeniser), its BOS id, and every
document's text in order. A different corpus, split or tokenizer is a different name, so an
entry is never stale. Entries are int32 ``.npy`` files under ``$SAE_LIGHTNING_CACHE/tokens``
(default ``$XDG_CACHE_HOME/sae_lightning``, else ``~/.cache/sae_lightning``);
``SAE_LIGHTNING_CACHE=off`` turns the cache off. Only fast (Rust) tokenizers are cached:
their serialisation is the fingerprint. A cache that cannot be read or written is skipped
with a warning, never an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sae_lightning.data.corpus import Document

log = logging.getLogger(__name__)
ENV = "SAE_LIGHTNING_CACHE"
OFF = ("off", "0", "false", "none")
VERSION = b"sae-lightning token cache 1"  # bump when the encoding itself changes


def cache_root() -> Path | None:
    """The cache folder, or ``None`` when ``SAE_LIGHTNING_CACHE`` turns it off."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sae_lightning"


def fingerprint(docs: Sequence[Document], tokenizer) -> str | None:
    """The entry name for these documents and this tokenizer; ``None`` if the tokenizer
    cannot be fingerprinted (not a fast tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    digest = hashlib.blake2b(VERSION, digest_size=20)
    digest.update(backend.to_str().encode())
    digest.update(f"|bos={tokenizer.bos_token_id}|n={len(docs)}|".encode())
    for doc in docs:
        text = doc.text.encode("utf-8", "surrogatepass")
        digest.update(len(text).to_bytes(8, "little"))  # no two corpora hash alike by joining
        digest.update(text)
    return digest.hexdigest()


def cached_tokens(docs: Sequence[Document], tokenizer, encode: Callable[[], Tensor]) -> Tensor:
    """``encode()``'s token stream, read from the cache when an entry exists, else computed
    and stored. The result is the same ``int64`` tensor either way."""
    root, key = cache_root(), None
    if root is not None:
        key = fingerprint(docs, tokenizer)
    if key is None:
        return encode()
    path = root / "tokens" / f"{key}.npy"
    if path.is_file():
        try:
            tokens = torch.from_numpy(np.load(path, allow_pickle=False)).long()
            log.info("tokens of %d documents read from the cache %s", len(docs), path)
            return tokens
        except (OSError, ValueError) as err:  # a damaged entry: computed again, replaced
            log.warning("token cache entry %s is unreadable (%s); tokenizing again", path, err)
    tokens = encode()
    _store(path, tokens)
    return tokens


def _store(path: Path, tokens: Tensor) -> None:
    """Write the entry atomically (a temporary file renamed); warn and go on if it fails."""
    if tokens.numel() and int(tokens.max()) >= 2**31:
        return  # ids beyond int32: not cached
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as tmp:
            np.save(tmp, tokens.to(torch.int32).numpy(), allow_pickle=False)
        os.replace(tmp_name, path)
    except OSError as err:
        log.warning(
            "could not write the token cache %s (%s); set %s=off or to a writable folder",
            path,
            err,
            ENV,
        )
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
