"""``Reader``: what an analysed SAE reads, and where its decoder writes, in its model(s).

An SAE reads one hook of one model and writes back there; a transcoder reads one hook and
writes another (``write_hook``); a crosscoder reads several *sources* at once, one hook of
one model each (``toy-1l`` and ``toy-1l-b`` at ``blocks.0.mlp.hook_post``, say), its input the
concatenation ``[x_A | x_B]`` and its decoder one block per source. Every place of the
analysis that runs the frozen model(s) to get the SAE's input (the streaming pass, first
passes, feature selection, the dashboards' windows, the prompt page) calls
:meth:`Reader.capture`, and every ablation :meth:`Reader.ablation_hooks`, so all of them work
for the three kinds alike.

The *analysed model* is the first source's (``model``): the tokens are its tokenizer's, the
logits and logit weights its own. A crosscoder feature is ablated there by removing its
output through that model's decoder block(s), with its activation computed from every
source on the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jaxtyping import Float, Int
from torch import Tensor

from sae_lightning.hooks import (
    ablation_hooks,
    capture_activations,
    capture_side_by_side,
    edit_hook,
)

Hooks = list[tuple[str, Callable]]


@dataclass
class Reader:
    """Where an analysed SAE reads and writes (see the module doc).

    Args:
        model: The analysed model: the first source's, whose tokens, logits and
            unembedding the analysis uses.
        hook_name: Where the SAE reads ``model``.
        write_hook: Where its decoder writes, when not ``hook_name`` (a transcoder's output).
        others: A crosscoder's further sources, ``(model, hook_name)`` each, in input order
            after ``(model, hook_name)``; empty for an SAE or a transcoder.
    """

    model: Any
    hook_name: str
    write_hook: str | None = None
    others: tuple[tuple[Any, str], ...] = ()

    @property
    def sources(self) -> tuple[tuple[Any, str], ...]:
        """Every ``(model, hook_name)`` read, in input order."""
        return ((self.model, self.hook_name), *self.others)

    @property
    def models(self) -> list[Any]:
        """The distinct frozen models read (the analysed one first)."""
        out: list[Any] = []
        for model, _ in self.sources:
            if not any(model is seen for seen in out):
                out.append(model)
        return out

    @property
    def writes(self) -> str:
        """The hook the decoder writes in ``model`` (a crosscoder: its first source's)."""
        return self.write_hook or self.hook_name

    def capture(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_in"]:
        """The SAE's input on ``tokens`` at every position (BOS included), on ``tokens``'
        device: the hook's activations (one source), or the sources' side by side, float32."""
        if not self.others:
            return capture_activations(self.model, tokens, self.hook_name)
        return capture_side_by_side(self.sources, tokens)

    def blocks(self, w_dec: Float[Tensor, "f d_in"]) -> list[Tensor]:
        """Decoder rows cut into the sources' blocks (equal widths), in input order."""
        n = len(self.sources)
        if w_dec.shape[-1] % n:
            raise ValueError(
                f"decoder width {w_dec.shape[-1]} is not divisible by the {n} sources read"
            )
        return list(w_dec.split(w_dec.shape[-1] // n, dim=-1))

    def own_block(self, w_dec: Float[Tensor, "f d_in"]) -> Float[Tensor, "f d_source"]:
        """The part of decoder rows that writes into the analysed model at ``writes`` (all
        of it for an SAE or a transcoder; a crosscoder's first block)."""
        return self.blocks(w_dec)[0] if self.others else w_dec

    def ablation_hooks(
        self, sae: Any, index: Int[Tensor, " r"], tokens: Int[Tensor, "r pos"], start: int
    ) -> tuple[Hooks, list[Tensor]]:
        """Hooks for ``model.run_with_hooks(tokens)`` that remove feature ``index[r]``'s
        output from row ``r`` at positions ``start`` onwards, and a list that holds its
        removed activations ``[r, pos]`` once the forward has run (see
        :func:`sae_lightning.hooks.ablation_hooks`).

        A crosscoder's activations need every source, so they are computed first, on the
        clean tokens (an edit at a hook never changes that hook's activations at any
        position of the same forward), and each block writing into ``model`` is removed
        at its source's hook.
        """
        if not self.others:
            return ablation_hooks(sae, index, self.hook_name, self.writes, start)
        w_dec = sae.W_dec[index]  # [r, d_in]
        x = self.capture(tokens).to(device=w_dec.device, dtype=w_dec.dtype)
        acts = sae.encode_selected(x, index)  # [r, pos]
        acts[:, :start] = 0.0  # not analysed (BOS when dropped): left as it is
        hooks: Hooks = []
        for (model, hook), block in zip(self.sources, self.blocks(w_dec), strict=True):
            if model is self.model:
                removed = acts.unsqueeze(-1) * block.unsqueeze(1)  # [r, pos, d_source]
                hooks.append((hook, edit_hook(lambda a, removed=removed: a - removed.to(a))))
        return hooks, [acts]
