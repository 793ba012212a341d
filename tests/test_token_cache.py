"""The token cache: a hit gives the tokens a fresh encoding gives, without the tokenizer;
anything the tokens depend on (a document's text, the tokenizer) changes the entry; the
cache can be turned off, and a damaged or unwritable cache never fails a run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from sae_lightning.data.corpus import Document
from sae_lightning.data.token_cache import cache_root, fingerprint
from sae_lightning.data.tokens import encode_documents

DOCS = [
    Document("a.py", "import os\nfor x in y:\n    pass\n"),
    Document("b.md", "The end. Or not."),
]


@pytest.fixture
def tokenizer(embedded_model):
    return embedded_model.tokenizer


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SAE_LIGHTNING_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "tokens"


class CountingTokenizer:
    """The embedded tokenizer, counting its calls."""

    def __init__(self, tokenizer) -> None:
        self.inner, self.calls = tokenizer, 0
        self.backend_tokenizer, self.bos_token_id = (
            tokenizer.backend_tokenizer,
            tokenizer.bos_token_id,
        )

    def __call__(self, texts, **kwargs):
        self.calls += 1
        return self.inner(texts, **kwargs)


def test_a_second_encoding_is_read_from_the_cache(tokenizer, cache) -> None:
    counting = CountingTokenizer(tokenizer)
    first = encode_documents(DOCS, counting)
    assert counting.calls == 1 and len(list(cache.glob("*.npy"))) == 1
    second = encode_documents(DOCS, counting)
    assert counting.calls == 1  # no tokenizer call: read back
    assert second.dtype == first.dtype == torch.long and torch.equal(first, second)
    direct = [tokenizer.bos_token_id] + tokenizer(DOCS[0].text, add_special_tokens=False)[
        "input_ids"
    ]
    assert first[: len(direct)].tolist() == direct


def test_a_changed_text_or_tokenizer_is_another_entry(tokenizer, cache) -> None:
    key = fingerprint(DOCS, tokenizer)
    edited = [DOCS[0], Document("b.md", "The end. Or not!")]
    assert fingerprint(edited, tokenizer) != key
    joined = [Document("a.py", DOCS[0].text + DOCS[1].text)]  # same characters, other split
    assert fingerprint(joined, tokenizer) != fingerprint(DOCS, tokenizer)
    assert fingerprint(DOCS[::-1], tokenizer) != key
    other = CountingTokenizer(tokenizer)
    other.bos_token_id = tokenizer.bos_token_id + 1
    assert fingerprint(DOCS, other) != key
    counting = CountingTokenizer(tokenizer)
    encode_documents(DOCS, counting)
    encode_documents(edited, counting)
    assert counting.calls == 2 and len(list(cache.glob("*.npy"))) == 2


def test_the_cache_can_be_turned_off(tokenizer, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SAE_LIGHTNING_CACHE", "off")
    assert cache_root() is None
    counting = CountingTokenizer(tokenizer)
    encode_documents(DOCS, counting)
    encode_documents(DOCS, counting)
    assert counting.calls == 2
    monkeypatch.delenv("SAE_LIGHTNING_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "sae_lightning"


def test_a_damaged_entry_is_tokenized_again_and_replaced(tokenizer, cache, caplog) -> None:
    want = encode_documents(DOCS, tokenizer)
    (entry,) = cache.glob("*.npy")
    entry.write_bytes(b"not a numpy file")
    counting = CountingTokenizer(tokenizer)
    with caplog.at_level(logging.WARNING):
        got = encode_documents(DOCS, counting)
    assert counting.calls == 1 and torch.equal(got, want)
    assert "unreadable" in caplog.text
    assert torch.equal(encode_documents(DOCS, counting), want) and counting.calls == 1


def test_an_unwritable_cache_warns_and_tokenizes(tokenizer, tmp_path, monkeypatch, caplog) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("SAE_LIGHTNING_CACHE", str(blocker))
    with caplog.at_level(logging.WARNING):
        got = encode_documents(DOCS, tokenizer)
    assert got.numel() > 10 and "could not write the token cache" in caplog.text
    assert "SAE_LIGHTNING_CACHE=off" in caplog.text


def test_a_slow_tokenizer_is_not_cached(tokenizer, cache) -> None:
    slow = CountingTokenizer(tokenizer)
    slow.backend_tokenizer = None  # what a slow (Python) tokenizer lacks
    assert fingerprint(DOCS, slow) is None
    encode_documents(DOCS, slow)
    encode_documents(DOCS, slow)
    assert slow.calls == 2 and not cache.exists()
