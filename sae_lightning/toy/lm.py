"""The embedded 1-layer transformer as a plain PyTorch module, for pretraining.

It computes the same function as TransformerLens' native architecture (pre-LayerNorm block,
learned positions, GELU MLP, attention scaled by sqrt(d_head), unembedding with bias), but
uses ``scaled_dot_product_attention``, which is faster to train. Its ``state_dict()`` keys are
exactly the TransformerLens-format keys that ``TransformerBridge.load_state_dict`` accepts
with ``strict=True``, so the export needs no key mapping.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn


@dataclass
class LMConfig:
    """Shape of the embedded model (defaults: the shipped model)."""

    d_model: int = 256
    """Residual stream width."""
    n_heads: int = 8
    """Attention heads."""
    d_head: int = 32
    """Width of each head; n_heads * d_head must equal d_model."""
    d_mlp: int = 1024
    """MLP hidden width (the neurons the SAE reads)."""
    n_ctx: int = 128
    """Maximum context length (learned positions)."""
    d_vocab: int = 4096
    """Vocabulary size (the tokenizer's)."""
    act_fn: Literal["gelu", "relu", "gelu_new"] = "gelu"
    """MLP activation, by TransformerLens name."""
    eps: float = 1e-5
    """LayerNorm epsilon."""

    def __post_init__(self) -> None:
        if self.n_heads * self.d_head != self.d_model:
            raise ValueError(
                f"n_heads * d_head must equal d_model, got {self.n_heads} * {self.d_head} "
                f"!= {self.d_model}"
            )

    def bridge_config(self) -> dict:
        """Keyword config for ``TransformerBridge.boot_native``."""
        return {
            **{k: v for k, v in asdict(self).items()},
            "n_layers": 1,
            "normalization_type": "LN",
            "positional_embedding_type": "standard",
        }


_ACTS = {"gelu": F.gelu, "relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


class _Attention(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.k = nn.Linear(cfg.d_model, cfg.d_model)
        self.v = nn.Linear(cfg.d_model, cfg.d_model)
        self.o = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        b, t, d = x.shape
        q, k, v = (
            proj(x).view(b, t, self.n_heads, self.d_head).transpose(1, 2)
            for proj in (self.q, self.k, self.v)
        )  # [batch, head, pos, d_head]
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(z.transpose(1, 2).reshape(b, t, d))


class _MLP(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        # "in" is a keyword; TransformerLens names this projection blocks.0.mlp.in
        self.add_module("in", nn.Linear(cfg.d_model, cfg.d_mlp))
        self.out = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.act = _ACTS[cfg.act_fn]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        return self.out(self.act(getattr(self, "in")(x)))  # hidden: [batch, pos, d_mlp]


class _Block(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.eps)
        self.attn = _Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.eps)
        self.mlp = _MLP(cfg)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    """One-layer transformer whose parameter names are TransformerLens-format keys."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.blocks = nn.ModuleList([_Block(cfg)])
        self.ln_final = nn.LayerNorm(cfg.d_model, eps=cfg.eps)
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab)
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2 init: N(0, 0.02), residual-writing projections scaled by 1/sqrt(2 * n_layers).
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)
            elif ".ln" in name or name.startswith("ln_final"):
                nn.init.ones_(param)
            else:
                std = (
                    0.02 / math.sqrt(2)
                    if name.endswith(("attn.o.weight", "mlp.out.weight"))
                    else 0.02
                )
                nn.init.normal_(param, std=std)

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"context of {tokens.shape[1]} tokens exceeds n_ctx={self.cfg.n_ctx}")
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.pos_embed(pos)
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_final(x))
