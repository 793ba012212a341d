from __future__ import annotations

import pytest

from sae_lightning.data.corpus import Document, split_documents
from sae_lightning.models import EMBEDDED_DIR
from sae_lightning.toy.tokenizer import EOT, REQUIRED_SINGLE_TOKENS, load_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(EMBEDDED_DIR / "tokenizer")


def test_shipped_tokenizer_shape(tokenizer):
    assert len(tokenizer) == 4096
    assert (
        tokenizer.bos_token == EOT
        and tokenizer.convert_tokens_to_ids(EOT) == tokenizer.bos_token_id
    )
    for text in REQUIRED_SINGLE_TOKENS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (text, tokenizer.convert_ids_to_tokens(ids))


SAMPLES = [
    "from os import path\n\nfor i in range(3):\n    if i:\n        pass\n"
    "    else:\n        return i.real\n",
    "The quick brown fox. It jumped over the lazy dog; then it slept.\n",
    "\tTabs,  double  spaces,\r\nCRLF and trailing space \n",
    "Unicode: naïve café — 日本語 ✓ 🐍 <img src=x onerror=alert(1)>",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_is_exact(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_round_trip_on_heldout_documents(tokenizer, stdlib_docs):
    val = split_documents(stdlib_docs, "val")
    code = next(d for d in val if d.name.startswith("stdlib/"))
    prose = next(d for d in val if d.name.startswith("pydoc/"))
    for doc in (code, prose):
        assert (
            tokenizer.decode(tokenizer(doc.text, add_special_tokens=False)["input_ids"]) == doc.text
        )


def test_bos_is_prepended(tokenizer):
    ids = tokenizer("import os")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) == 3


def test_too_small_vocab_names_the_split_tokens():
    docs = [Document("a.py", "import os\nfor x in y:\n    pass\nelse:\n    return 1.\n")]
    with pytest.raises(ValueError, match="splits .*' import'.*larger vocab_size than 260"):
        train_tokenizer(docs, vocab_size=260)
