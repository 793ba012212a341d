"""Byte-level BPE tokenizer for the embedded model, saved as a Hugging Face tokenizer folder."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from sae_lightning.data.corpus import Document

EOT = "<|endoftext|>"
# Strings the seed's features are about; each must be one token or the features split.
REQUIRED_SINGLE_TOKENS = (" import", "import", " for", " else", " def", " return", ".")


def _texts(docs: Iterable[Document]) -> Iterator[str]:
    for doc in docs:
        yield doc.text


def train_tokenizer(docs: Iterable[Document], vocab_size: int = 4096) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 pre-tokenisation, no normaliser: exact round trip)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_texts(docs), trainer=trainer)
    missing = [s for s in REQUIRED_SINGLE_TOKENS if len(tokenizer.encode(s).ids) != 1]
    if missing:
        raise ValueError(
            f"trained tokenizer splits {missing} into several tokens; use a larger vocab_size "
            f"than {vocab_size} or a corpus with more Python code"
        )
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, folder: str | Path) -> Path:
    """Write ``tokenizer`` as a folder that ``AutoTokenizer.from_pretrained`` loads."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=EOT,
        pad_token=EOT,
        clean_up_tokenization_spaces=False,
    )
    folder = Path(folder)
    fast.save_pretrained(str(folder))
    return folder


def load_tokenizer(folder: str | Path):  # -> PreTrainedTokenizerFast
    """Load a tokenizer folder written by :func:`save_tokenizer`."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in tokenizer folder {str(folder)!r}")
    return AutoTokenizer.from_pretrained(str(folder), add_bos_token=True)
