"""A crosscoder's sources for ``analyze.py``: models loaded, checked, a :class:`Reader`.

A crosscoder export names its sources in ``metadata.sources``, one ``{"model_name",
"hook_name"}`` per block of its input, in order (``toy-1l`` then ``toy-1l-b`` at
``blocks.0.mlp.hook_post`` for ``experiment=crosscoder_models``). Each model is loaded once
by name, every model must share the first one's tokenizer (one token id, one text for all),
and every hook must be as wide as the crosscoder's per-source block.
"""

from __future__ import annotations

from typing import Any

from sae_lightning.analysis.comparison import check_same_tokenizer
from sae_lightning.analysis.loading import is_multi_source
from sae_lightning.analysis.reader import Reader
from sae_lightning.models import load_model_by_name
from sae_lightning.saes import SAE
from sae_lightning.saes.crosscoder import SHARED_BAND
from sae_lightning.spec import ActivationSpec


def check_sources(metadata: dict[str, Any]) -> list[tuple[str, str]]:
    """``(model_name, hook_name)`` of each source in ``metadata.sources``.

    Raises:
        ValueError: If ``sources`` is not a list of at least two objects with a non-empty
            ``model_name`` and ``hook_name`` each.
    """
    sources = metadata.get("sources")
    ok = isinstance(sources, list) and len(sources) >= 2
    pairs = []
    for s in sources if ok else []:
        name = s.get("model_name") if isinstance(s, dict) else None
        hook = s.get("hook_name") if isinstance(s, dict) else None
        ok = ok and isinstance(name, str) and bool(name) and isinstance(hook, str) and bool(hook)
        pairs.append((name, hook))
    if not ok:
        raise ValueError(
            f"SAE {metadata.get('source', '')} has metadata sources={sources!r}: a crosscoder "
            "names at least two sources, each {model_name, hook_name}, in input order"
        )
    return pairs


def load_sources(sae: SAE, metadata: dict[str, Any], loader: Any = load_model_by_name) -> Reader:
    """The :class:`Reader` of a crosscoder: every source's model (``loader(name)``, each name
    once) and hook, the first source's model analysed.

    Raises:
        ValueError: For malformed ``sources``, models that do not share a tokenizer, a hook
            that does not exist, or a hook whose width is not the crosscoder's block width
            ``d_in / n_sources`` (each message names the source).
    """
    pairs = check_sources(metadata)
    n_sources = int(getattr(sae, "n_sources", 0) or 0)
    if n_sources != len(pairs) or sae.d_in % len(pairs):
        raise ValueError(
            f"SAE {metadata.get('source', '')} ({sae.architecture}, d_in={sae.d_in}, "
            f"n_sources={n_sources or None}) does not read the {len(pairs)} sources its "
            f"metadata names ({[name for name, _ in pairs]})"
        )
    models: dict[str, Any] = {}
    for name, _ in pairs:
        if name not in models:
            models[name] = loader(name)
    first = pairs[0][0]
    for name, model in models.items():
        if name != first:
            check_same_tokenizer(
                models[first], first, model, name, what="a crosscoder's analysis", option="sources"
            )
    width = sae.d_in // len(pairs)
    for i, (name, hook) in enumerate(pairs):
        got = ActivationSpec(models[name], hook).d_in  # the hook checked, its width probed
        if got != width:
            raise ValueError(
                f"source {i} of the crosscoder reads {hook!r} of model {name!r}, which is "
                f"{got} wide, but the crosscoder's blocks are d_in / n_sources = {width} wide"
            )
    (model, hook), *others = [(models[name], hook) for name, hook in pairs]
    return Reader(model, hook, others=tuple(others))


def source_labels(metadata: dict[str, Any]) -> list[str]:
    """A display name per source: its model's name, or ``model hook`` when models repeat."""
    pairs = check_sources(metadata)
    names = [name for name, _ in pairs]
    if len(set(names)) == len(names):
        return names
    return [f"{name} {hook}" for name, hook in pairs]


def crosscoder_info(sae: SAE, metadata: dict[str, Any], features: list[int]) -> dict[str, Any]:
    """The report metadata of a crosscoder (nothing for another SAE): ``{"crosscoder":
    {"sources": labels, "band", "relative_decoder_norm": {feature: r}}}``, ``r`` of sources 0
    and 1 for each analysed feature (None where the decoder row is zero), from which the
    dashboards draw the shared / exclusive histogram."""
    if not is_multi_source(metadata):
        return {}
    r = sae.relative_decoder_norm(0, 1).double().cpu()
    norms = {str(f): (None if r[f].isnan() else float(r[f])) for f in features}
    labels = source_labels(metadata)
    info = {"sources": labels, "band": list(SHARED_BAND), "relative_decoder_norm": norms}
    return {"crosscoder": info}
