"""What an SAE reads from the frozen model: the hook, its kind and layout, and its positions.

Accepted hooks give one vector per token:

- ``residual``: ``blocks.L.hook_resid_pre|mid|post``, ``blocks.L.hook_mlp_out``,
  ``blocks.L.hook_attn_out`` (``d_model`` wide). A direction goes straight to the unembedding.
- ``mlp``: ``blocks.L.mlp.hook_pre|post`` (the MLP neurons, ``d_mlp`` wide). A direction
  reaches the residual stream through ``W_out`` (for ``hook_pre`` that ignores the
  activation function: a linear approximation).
- ``heads``: ``blocks.L.attn.hook_z`` (and ``hook_q|k|v``), ``[pos, n_heads, d_head]``,
  flattened head-major to ``n_heads * d_head`` as SAELens does, and un-flattened when a
  reconstruction is spliced back. A ``hook_z`` direction reaches the residual stream
  through ``W_O``.
- ``other``: any other hook whose activation is ``[batch, pos, d]`` (``ln2.hook_normalized``,
  ...): trained and analysed, without logit weights.

Refused before any work: attention patterns and scores (``[batch, heads, pos, pos]``), and
anything else that is not one vector per token.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

DEFAULT_HOOK = "blocks.0.mlp.hook_post"
"""The hook the paper's SAEs read: the MLP neurons of the first layer."""

HookKind = Literal["residual", "mlp", "heads", "other"]
_KINDS: tuple[tuple[HookKind, str], ...] = (
    ("residual", r"blocks\.(\d+)\.hook_(resid_pre|resid_mid|resid_post|mlp_out|attn_out)"),
    ("mlp", r"blocks\.(\d+)\.mlp\.hook_(pre|post)"),
    ("heads", r"blocks\.(\d+)\.attn\.hook_(z|q|k|v)"),
)
_REFUSED = re.compile(r".*\.hook_(pattern|attn_scores)")
ACCEPTED_KINDS = (
    "the residual stream (blocks.L.hook_resid_pre, blocks.L.hook_resid_mid, "
    "blocks.L.hook_resid_post), block outputs (blocks.L.hook_mlp_out, blocks.L.hook_attn_out), "
    "MLP neurons (blocks.L.mlp.hook_pre, blocks.L.mlp.hook_post), per-head outputs "
    "(blocks.L.attn.hook_z, flattened to n_heads*d_head), or any other hook with one vector "
    "per token"
)


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the hook is computed."""


def hook_kind(hook_name: str) -> tuple[HookKind, int | None]:
    """The kind of ``hook_name`` and its layer (None when the name has none)."""
    for kind, pattern in _KINDS:
        match = re.fullmatch(pattern, hook_name)
        if match:
            return kind, int(match.group(1))
    layer = re.match(r"blocks\.(\d+)\.", hook_name)
    return "other", int(layer.group(1)) if layer else None


def validate_hook(model, hook_name: str) -> None:
    """Raise a clear error when ``hook_name`` is not a hook point of ``model``, or is a hook
    whose activations are not one vector per token (attention patterns and scores)."""
    if hook_name not in model.hook_dict:
        names = sorted(model.hook_dict)
        shown = ", ".join(names[:60]) + (", ..." if len(names) > 60 else "")
        raise ValueError(
            f"hook {hook_name!r} is not a hook point of the model; valid hooks: {shown}"
        )
    check_hook_name(hook_name)


def check_hook_name(hook_name: str) -> None:
    """Refuse, by name alone (before any model is loaded), hooks that hold attention weights."""
    if _REFUSED.fullmatch(hook_name):
        raise ValueError(_not_per_token(hook_name, "it holds attention weights per head pair"))


def _not_per_token(hook_name: str, why: str) -> str:
    return (
        f"hook {hook_name!r} cannot be read by an SAE: {why}, not one vector per token. "
        f"Accepted: {ACCEPTED_KINDS}"
    )


def flatten_heads(
    act: Tensor, hook_name: str, tokens_shape: torch.Size
) -> Float[Tensor, "batch pos d"]:
    """``act`` as ``[batch, pos, d]``: per-head hooks flattened head-major; anything that is
    not one vector per token refused."""
    if act.shape[:2] != tokens_shape:
        raise ValueError(_not_per_token(hook_name, f"its activation has shape {list(act.shape)}"))
    if act.ndim == 4 and hook_kind(hook_name)[0] == "heads":
        return act.flatten(2)  # [batch, pos, n_heads * d_head]
    if act.ndim != 3:
        raise ValueError(_not_per_token(hook_name, f"its activation has shape {list(act.shape)}"))
    return act


def capture_activations(
    model, tokens: Int[Tensor, "batch pos"], hook_name: str | tuple[str, ...]
) -> Float[Tensor, "batch pos d_in"]:
    """Activations at ``hook_name`` (per-head hooks flattened); the forward stops there.

    Several hooks (a tuple, e.g. a transcoder's input and output hooks) are read in one
    forward, which stops once all have fired; their activations are concatenated along the
    last dimension in the order given.
    """
    names = (hook_name,) if isinstance(hook_name, str) else tuple(hook_name)
    box: dict[str, Tensor] = {}

    def keep(name: str) -> Callable[[Tensor, Any], None]:
        # keyed by the name asked for: a bridge calls an alias's hook with its own name
        def hook(act: Tensor, hook: Any) -> None:
            box[name] = act
            if len(box) == len(names):
                raise _StopForward

        return hook

    try:
        model.run_with_hooks(tokens, fwd_hooks=[(name, keep(name)) for name in names])
    except _StopForward:
        pass
    silent = [name for name in names if name not in box]
    if silent:
        raise RuntimeError(f"hook {silent[0]!r} did not fire during the forward pass")
    parts = [flatten_heads(box[name], name, tokens.shape) for name in names]
    return parts[0] if len(parts) == 1 else torch.cat([p.float() for p in parts], dim=-1)


def edit_hook(
    edit: Callable[[Float[Tensor, "batch pos d_in"]], Tensor],
) -> Callable[[Tensor, Any], Tensor]:
    """A forward hook that applies ``edit`` to the activation in its flat ``[batch, pos,
    d_in]`` layout and gives the model back its own layout (heads un-flattened) and dtype."""

    def hook(act: Tensor, hook: Any) -> Tensor:
        flat = act.flatten(2) if act.ndim == 4 else act
        return edit(flat).to(act.dtype).reshape(act.shape)

    return hook


def ablation_hooks(
    sae: Any, index: Tensor, read_hook: str, write_hook: str, start: int
) -> tuple[list[tuple[str, Callable]], list[Tensor]]:
    """Forward hooks that remove feature ``index[r]``'s output ``act * W_dec[f]`` from batch
    row ``r`` at ``write_hook``, its activation read at ``read_hook`` in the same forward (the
    same hook for an SAE; a transcoder's input and output hooks), at positions ``start``
    onwards (1 leaves BOS alone, as training does).

    Returns:
        The hooks for ``run_with_hooks`` and a list that receives the removed activations
        ``[r, pos]`` (0 before ``start``) during the forward.
    """
    w_dec = sae.W_dec[index]  # [r, d_out]
    box: list[Tensor] = []

    def encode(x: Tensor) -> Tensor:  # [r, pos, d_in], heads flattened
        act = sae.encode_selected(x.to(w_dec.dtype), index)  # [r, pos]
        act[:, :start] = 0.0  # not analysed (BOS when dropped): left as it is
        box.append(act)
        return x

    def remove(x: Tensor) -> Tensor:  # [r, pos, d_out]
        if read_hook == write_hook:
            encode(x)
        return x - (box[-1].unsqueeze(-1) * w_dec.unsqueeze(1)).to(x.dtype)

    hooks = [(write_hook, edit_hook(remove))]
    if read_hook != write_hook:
        hooks.insert(0, (read_hook, edit_hook(encode)))  # a transcoder's input fires first
    return hooks, box


def residual_directions(
    model, hook_name: str, w: Float[Tensor, "f d_in"]
) -> Float[Tensor, "f d_model"] | None:
    """Directions at ``hook_name`` mapped into the residual stream (None where no linear map
    exists: q/k/v and other hooks). MLP hooks go through ``W_out``, ``hook_z`` through
    ``W_O``, residual and output hooks are there already."""
    kind, layer = hook_kind(hook_name)
    if kind == "residual":
        return w
    if kind == "mlp":
        w_out = model.blocks[layer].mlp.W_out.detach().float()  # [d_mlp, d_model]
        _check_width(w, w_out.shape[0], hook_name, "d_mlp")
        return w @ w_out.to(w.device)
    if hook_name.endswith("attn.hook_z"):
        w_o = model.blocks[layer].attn.W_O.detach().float()  # [n_heads, d_head, d_model]
        w_o = w_o.reshape(-1, w_o.shape[-1])  # [n_heads * d_head, d_model], head-major
        _check_width(w, w_o.shape[0], hook_name, "n_heads * d_head")
        return w @ w_o.to(w.device)
    return None


def _check_width(w: Tensor, width: int, hook_name: str, what: str) -> None:
    if w.shape[1] != width:
        raise ValueError(
            f"decoder width {w.shape[1]} does not match {what}={width} of {hook_name!r}"
        )


def context_length(model, n_ctx: int | None, key: str = "n_ctx") -> int:
    """``n_ctx`` (None: the model's own), checked to fit the model; ``key`` names the option."""
    limit = int(model.cfg.n_ctx)
    n_ctx = int(n_ctx or limit)
    if not 2 <= n_ctx <= limit:
        raise ValueError(f"{key}={n_ctx} must lie in 2..{limit} (the model's n_ctx)")
    return n_ctx


def model_device(model) -> torch.device:
    """Where ``model``'s weights are (its first parameter's device)."""
    return next(model.parameters()).device


def capture_side_by_side(
    sources: Iterable[tuple[Any, str]], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos d"]:
    """Each ``(model, hook_name)``'s activations on the same ``tokens`` (run on the model's
    own device), float32, concatenated in order on ``tokens``' device: a crosscoder's input
    ``[x_A | x_B]``."""
    parts = [
        capture_activations(model, tokens.to(model_device(model)), hook).float().to(tokens.device)
        for model, hook in sources
    ]
    return torch.cat(parts, dim=-1)
