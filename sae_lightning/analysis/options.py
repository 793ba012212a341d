"""Checks of ``conf/analyze.yaml``'s options that need no SAE and no model.

:func:`check_options` runs before anything loads, so a mistake in ``prompt=``,
``features=`` or the criteria/``compare_with`` pair stops the analysis in a second with one
message, not after the model has loaded or the whole pass has run.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from sae_lightning.analysis.criterion import Criterion
from sae_lightning.analysis.selection import check_spec

log = logging.getLogger(__name__)

PROMPT_FORMS = (
    "null (no prompts page), a non-empty text ('prompt=\"import os\"') or a non-empty list "
    'of non-empty texts (\'prompt=["def main():","import os"]\')'
)


def prompt_texts(value: Any) -> list[str] | None:
    """``prompt=`` as a list of texts, or None when not set.

    Raises:
        ValueError: For ``""``, ``[]``, a list holding an empty text, or anything that is
            not text (the message names the value and the valid forms).
    """
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None:
        return None
    texts = [value] if isinstance(value, (str, int, float)) else value
    if not isinstance(texts, list) or not texts:
        raise ValueError(f"prompt={value!r} is not a prompt; valid: {PROMPT_FORMS}")
    if value == "":
        raise ValueError(f"prompt='' is an empty text; valid: {PROMPT_FORMS}")
    for i, text in enumerate(texts):
        if isinstance(text, bool) or not isinstance(text, (str, int, float)) or str(text) == "":
            raise ValueError(
                f"prompt={value!r} holds an empty or non-text prompt (item {i}: {text!r}); "
                f"valid: {PROMPT_FORMS}"
            )
    return [str(text) for text in texts]


def check_compare_with(criteria: list[Criterion], compare_with: Any) -> None:
    """Refuse criteria that need a second SAE when ``compare_with`` is not set; warn when it
    is set but no criterion reads it.

    Raises:
        ValueError: Naming the criteria that need ``compare_with`` and the two ways out.
    """
    needing = [c.name for c in criteria if c.needs_compare_with]
    if needing and not compare_with:
        raise ValueError(
            f"criteria {needing} need compare_with=OTHER_SAE (a second SAE to match each "
            f"feature against, on the same tokens), but compare_with={compare_with!r}: pass "
            f"compare_with=PATH or leave {needing} out of criteria=[...]"
        )
    if compare_with and not needing:
        log.warning(
            "compare_with=%s is loaded, but none of the criteria %s reads it: add universality "
            "to criteria=[...] to match the features against it",
            compare_with,
            [c.name for c in criteria],
        )


def check_options(cfg: DictConfig, criteria: list[Criterion]) -> None:
    """Every check of ``cfg`` that needs no SAE and no model (see the module docstring).

    Raises:
        ValueError: For a bad ``prompt=``, a malformed ``features=``, or criteria that need
            ``compare_with`` without it.
    """
    prompt_texts(cfg.get("prompt"))
    check_spec(cfg.features)
    check_compare_with(criteria, cfg.get("compare_with"))
