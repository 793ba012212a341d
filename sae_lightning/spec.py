"""``ActivationSpec``: what an SAE reads from which frozen model, built once and handed to
the data module (which captures training activations with it) and the module (which
validates by splicing reconstructions back with it). A crosscoder of two models uses
:class:`~sae_lightning.paired.PairedSpec`, which holds one ``ActivationSpec`` per model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sae_lightning.hooks import (
    HookKind,
    capture_activations,
    context_length,
    edit_hook,
    flatten_heads,
    hook_kind,
    model_device,
    validate_hook,
)


@dataclass
class ActivationSpec:
    """What is read from which model: built once, handed to the DataModule and the module.

    Args:
        model: The frozen transformer (never a submodule, never checkpointed).
        hook_name: The hook the SAE reads.
        drop_bos: The BOS position of each context is not trained on (nor analysed).
        n_ctx: Context length (at most the model's).
        hook_name_out: A transcoder's target: the hook it reconstructs (None: ``hook_name``,
            an SAE). Then every captured activation is ``[x_in | x_out]`` (``d_in + d_out``
            wide) from one forward, and validation splices the reconstruction in here.
    """

    model: Any = field(repr=False)
    hook_name: str
    drop_bos: bool = True
    n_ctx: int = 0
    hook_name_out: str | None = None
    d_in: int = field(init=False)
    d_out: int | None = field(init=False)
    kind: HookKind = field(init=False)
    layer: int | None = field(init=False)

    def __post_init__(self) -> None:
        validate_hook(self.model, self.hook_name)
        if self.hook_name_out is not None:
            validate_hook(self.model, self.hook_name_out)
            if self.hook_name_out == self.hook_name:
                raise ValueError(
                    f"hook_name_out={self.hook_name_out!r} is hook_name: a transcoder maps one "
                    "hook to another (e.g. blocks.0.ln2.hook_normalized -> "
                    "blocks.0.hook_mlp_out); for an SAE leave hook_name_out null"
                )
        self.n_ctx = context_length(self.model, self.n_ctx or None)
        self.kind, self.layer = hook_kind(self.hook_name)
        probe = torch.zeros(1, 2, dtype=torch.long, device=model_device(self.model))
        with torch.inference_mode():
            widths = [
                int(capture_activations(self.model, probe, name).shape[-1])
                for name in self.hook_names
            ]
        self.d_in, self.d_out = widths[0], (widths[1] if len(widths) > 1 else None)

    @property
    def hook_names(self) -> tuple[str, ...]:
        """The hooks captured, in the order of the captured vector's parts."""
        return (
            (self.hook_name,)
            if self.hook_name_out is None
            else (self.hook_name, self.hook_name_out)
        )

    @property
    def models(self) -> tuple[Any, ...]:
        """The frozen models read (one; a :class:`~sae_lightning.paired.PairedSpec` two)."""
        return (self.model,)

    @property
    def splice_hook(self) -> str:
        """Where a reconstruction goes back into the model (the transcoder's output hook)."""
        return self.hook_name_out or self.hook_name

    @property
    def width(self) -> int:
        """Width of a captured vector: ``d_in`` (+ ``d_out`` for a transcoder)."""
        return self.d_in + (self.d_out or 0)

    @property
    def start(self) -> int:
        """The first position trained on (1 when BOS is dropped)."""
        return int(self.drop_bos)

    def capture(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos width"]:
        """Float32 activations at the hook(s) of every position (BOS included)."""
        return capture_activations(self.model, tokens, self.hook_names).float()

    def logits_and_capture(
        self, tokens: Int[Tensor, "batch pos"]
    ) -> tuple[Float[Tensor, "batch pos vocab"], Float[Tensor, "batch pos width"]]:
        """The clean logits and the float32 activations at the hook(s), in one forward."""
        names = self.hook_names
        logits, cache = self.model.run_with_cache(tokens, names_filter=list(names))
        parts = [flatten_heads(cache[n], n, tokens.shape).float() for n in names]
        return logits, parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def spliced_part(self, acts: Float[Tensor, "batch pos width"]) -> Tensor:
        """The part of captured activations that lives at ``splice_hook`` (all of it for an
        SAE; ``x_out`` for a transcoder)."""
        return acts if self.d_out is None else acts[..., self.d_in :]

    def trained(self, acts: Float[Tensor, "batch pos d_in"]) -> Float[Tensor, "n d_in"]:
        """The positions the SAE trains on, flattened to rows."""
        return acts[:, self.start :].reshape(-1, acts.shape[-1])

    def with_trained(
        self, acts: Float[Tensor, "batch pos d_in"], rows: Float[Tensor, "n d_in"]
    ) -> Float[Tensor, "batch pos d_in"]:
        """``acts`` with the trained positions replaced by ``rows`` (BOS kept if dropped)."""
        out = acts.clone()
        out[:, self.start :] = rows.reshape(acts.shape[0], -1, acts.shape[2]).to(acts.dtype)
        return out

    def run_with_replacement(
        self, tokens: Int[Tensor, "batch pos"], acts: Float[Tensor, "batch pos d"]
    ) -> Float[Tensor, "batch pos vocab"]:
        """Logits with the activation at ``splice_hook`` replaced by ``acts`` (flat layout)."""
        hook = edit_hook(lambda _: acts)
        return self.model.run_with_hooks(tokens, fwd_hooks=[(self.splice_hook, hook)])
