"""The ``compare_with`` SAE, and the model it reads when that is not the analysed one.

An SAE names its model in ``metadata.model_name``. When the ``compare_with`` SAE names the
same model as the SAE under analysis (aliases resolved: ``gelu-1l`` is
``NeelNanda/GELU_1L512W_C4_Code``), it reads that model (the same-model comparison). When it
names another model, or ``compare_model=`` gives one, that model is loaded too (frozen, moved
to the analysis device with the first) and streamed on the same tokens: cross-model
universality, as in *Towards Monosemanticity* (features of two transformers trained from
different seeds). The same tokens mean the same ids only if both models share the tokenizer,
so the full vocabulary mapping (every token string and its id, and the BOS id) is compared,
not its size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sae_lightning.analysis.loading import check_compatible, load_sae
from sae_lightning.hooks import hook_kind
from sae_lightning.models import EMBEDDED_NAME, load_model_by_name, resolve_legacy_name
from sae_lightning.saes import SAE


@dataclass
class Comparison:
    """The ``compare_with`` SAE and where it reads."""

    sae: SAE
    metadata: dict[str, Any]
    model: Any = None
    """The model it reads when that is not the analysed SAE's model, else None."""
    hook_name: str | None = None
    """Where it reads ``model`` (None: the analysed SAE's hook)."""
    model_name: str | None = None
    """``model``'s name (None when it is the analysed SAE's model)."""


def same_model(a: str, b: str) -> bool:
    """Whether two model names name one model (TransformerLens aliases resolved)."""
    if a == b:
        return True
    try:
        return resolve_legacy_name(a) == resolve_legacy_name(b)
    except ValueError:  # not both legacy names: distinct unless equal
        return False


def neuron_hook(hook_name: str) -> str:
    """The MLP neurons (``blocks.L.mlp.hook_post``) of the layer ``hook_name`` reads (L = 0
    for a hook without a layer): the neuron baseline of cross-model universality."""
    layer = hook_kind(hook_name)[1]
    return f"blocks.{layer or 0}.mlp.hook_post"


def _describe(name: str, tokenizer: Any) -> str:
    path = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    size = len(tokenizer.get_vocab()) if tokenizer is not None else 0
    return f"model {name!r} (tokenizer {path!r}, {size} tokens)"


def _first_difference(a: dict[str, int], b: dict[str, int], names: tuple[str, str]) -> str:
    """The first token (by id) whose id differs: ``-`` where a vocabulary lacks it."""
    for token in sorted(a.keys() | b.keys(), key=lambda t: (a.get(t, b.get(t, 0)), t)):
        if a.get(token) != b.get(token):
            ids = [str(v.get(token, "-")) for v in (a, b)]
            return f"token {token!r} has id {ids[0]} in {names[0]!r}, {ids[1]} in {names[1]!r}"
    return "the BOS ids differ"


def check_same_tokenizer(
    model_a: Any,
    name_a: str,
    model_b: Any,
    name_b: str,
    what: str = "cross-model universality",
    option: str = "compare_with",
) -> None:
    """Refuse two models whose tokenizers differ: the same ids would be different texts.

    ``what`` names the work that runs both models on one set of token ids (the messages
    say it), ``option`` the setting that named model B.

    Raises:
        ValueError: Naming both models and tokenizers, and the first token whose id differs
            (or that one of them lacks); also when either model has no tokenizer.
    """
    tok_a, tok_b = getattr(model_a, "tokenizer", None), getattr(model_b, "tokenizer", None)
    both = f"{_describe(name_a, tok_a)} and {_describe(name_b, tok_b)}"
    if tok_a is None or tok_b is None:
        raise ValueError(
            f"{what} needs both models' tokenizers to check they agree: "
            f"{both}; load models that carry one"
        )
    vocab_a, vocab_b = tok_a.get_vocab(), tok_b.get_vocab()
    if vocab_a != vocab_b or tok_a.bos_token_id != tok_b.bos_token_id:
        differ = _first_difference(vocab_a, vocab_b, (name_a, name_b))
        raise ValueError(
            f"{option} reads {_describe(name_b, tok_b)}, which does not share the tokenizer "
            f"of {_describe(name_a, tok_a)} ({differ}): {what} runs both models on the same "
            f"token ids, so it needs one tokenizer; use models trained with the same tokenizer"
        )


def load_comparison(
    path: str,
    metadata: dict[str, Any],
    model: Any,
    hook_name: str,
    compare_model: Any = None,
) -> Comparison:
    """The ``compare_with`` SAE at ``path``, with its model when that is another one.

    Args:
        path: The ``compare_with`` SAE (any form :func:`load_sae` reads).
        metadata: The analysed SAE's metadata (its ``model_name``).
        model: The analysed SAE's model, reading ``hook_name``.
        hook_name: The analysed hook.
        compare_model: A model for the ``compare_with`` SAE (``compare_model=``); None: the
            one its metadata names, which is ``model`` when the names agree.

    Raises:
        ValueError: If the SAE does not fit its model and hook, or the two models do not share
            a tokenizer (the message names both).
    """
    sae, meta = load_sae(path)
    name_a = metadata.get("model_name") or EMBEDDED_NAME
    name_b = meta.get("model_name") or name_a
    if compare_model is None and same_model(name_a, name_b):
        check_compatible(sae, meta, model, hook_name)  # the same-model comparison
        return Comparison(sae, meta)
    other = compare_model if compare_model is not None else load_model_by_name(name_b)
    if compare_model is not None:
        name_b = str(getattr(getattr(other, "cfg", None), "model_name", None) or name_b)
    check_same_tokenizer(model, name_a, other, name_b)
    other_hook = meta.get("hook_name") or hook_name
    check_compatible(sae, meta, other, other_hook)
    return Comparison(sae, meta, other, other_hook, name_b)
