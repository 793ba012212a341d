"""Tiny, randomly initialised Hugging Face causal LMs of three families, saved to a folder.

Built from ``transformers`` configs (no download), with the embedded model's tokenizer, so
that ``model=hf model.name=<folder>`` and the analysis run on them offline.
"""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("gpt2", "neox", "llama")
N_CTX = 64


def _config(family: str, n_layers: int):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    if family == "gpt2":
        return GPT2Config(vocab_size=4096, n_positions=N_CTX, n_embd=64, n_layer=n_layers, n_head=4)
    if family == "neox":
        return GPTNeoXConfig(
            vocab_size=4096,
            max_position_embeddings=N_CTX,
            hidden_size=64,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            intermediate_size=256,
        )
    if family == "llama":
        return LlamaConfig(
            vocab_size=4096,
            max_position_embeddings=N_CTX,
            hidden_size=64,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
        )
    raise ValueError(f"unknown family {family!r}; valid: {FAMILIES}")


def save_tiny_model(family: str, folder: Path, n_layers: int = 2, seed: int = 0) -> Path:
    """A tiny ``family`` model with random weights and the embedded tokenizer in ``folder``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sae_lightning.models import EMBEDDED_DIR

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(family, n_layers))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(EMBEDDED_DIR / "tokenizer")).save_pretrained(folder)
    return folder
