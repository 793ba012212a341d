"""Which features to analyse: ``all``, an explicit list, ``top:N``, or those firing on prompts.

Forms of ``features=`` on the command line (and in YAML)::

    features=all                          # every feature of the dictionary
    features=[12,40,301]                  # explicit indices
    features=top:100                      # the 100 that fire most often on the first contexts
    features={prompts:[def main,import os]}    # the strongest on these texts
    "features='prompts:[def main,import os]'"  # the same as one quoted string (split at ",")
    features: {prompts: ["def f(x, y):"]}       # (YAML) any text, commas included
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from sae_lightning.analysis.reader import Reader
from sae_lightning.hooks import model_device
from sae_lightning.saes import SAE, JumpReLUSAE, ReLUSAE
from sae_lightning.saes.jumprelu import jumprelu

log = logging.getLogger(__name__)

TOP_CONTEXTS = 64
"""``top:N`` counts firings over this many of the analysed contexts."""
PER_PROMPT = 20
"""``prompts`` keeps this many features per prompt (by max activation on it)."""
FORMS = "'all', a list of indices, 'top:N', 'prompts:[text,...]' or {prompts: [text, ...]}"


def _plain(spec: Any) -> Any:
    if isinstance(spec, (DictConfig, ListConfig)):
        return OmegaConf.to_container(spec, resolve=True)
    return spec


def encode_features(
    sae: SAE, x: Float[Tensor, "*batch d_in"], index: Int[Tensor, " f"] | None
) -> Float[Tensor, "*batch f"]:
    """``sae.encode(x)[..., index]`` (every feature when ``index`` is None).

    ReLU and JumpReLU features are each a function of their own encoder column, so only the
    selected columns are multiplied: an analysis of 256 of 4,096 features pays for 256 in
    every batch, not for the whole dictionary. Other architectures (TopK, BatchTopK, whose
    features compete; Gated; any subclass) encode everything and pick.
    """
    if index is None:
        return sae.encode(x)
    kind = type(sae)
    if kind is not ReLUSAE and kind is not JumpReLUSAE:
        return sae.encode(x).index_select(-1, index)
    sae._check_width(x, "d_in", "input")
    w = sae.W_enc.index_select(1, index)  # [d_in, f]
    pre = x @ w + sae.encoder_bias().index_select(0, index)  # [*batch, f]
    if kind is ReLUSAE:
        return torch.relu(pre)
    return jumprelu(pre, sae.threshold.index_select(0, index), sae.bandwidth)


def _check_indices(indices: Sequence[Any], d_sae: int) -> list[int]:
    out = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < d_sae:
            raise ValueError(
                f"feature index {i!r} is out of range: this SAE has d_sae={d_sae} features, "
                f"valid indices are 0..{d_sae - 1}"
            )
        out.append(i)
    if not out:
        raise ValueError("features=[] selects nothing; give at least one index or 'all'")
    return list(dict.fromkeys(out))  # drop repeats, keep order


@torch.inference_mode()
def _encode(sae: SAE, reader: Reader, tokens: Int[Tensor, "b pos"]) -> Tensor:
    device = model_device(reader.model)
    acts = reader.capture(tokens.to(device))  # [b, pos, d_in]
    return sae.to(device).encode(acts.to(sae.W_enc.dtype))  # [b, pos, d_sae]


def top_firing(
    sae: SAE,
    reader: Reader,
    contexts: Int[Tensor, "n n_ctx"],
    n: int,
    batch: int = 8,
    start: int = 1,
) -> list[int]:
    """The ``n`` features that fire on most tokens of the first ``TOP_CONTEXTS`` contexts,
    counting positions ``start`` onwards (1: BOS skipped, as the analysis pass skips it)."""
    if not 1 <= n <= sae.d_sae:
        raise ValueError(f"top:{n} must ask for 1..{sae.d_sae} features (d_sae={sae.d_sae})")
    counts = torch.zeros(sae.d_sae, dtype=torch.long)
    rows = contexts[:TOP_CONTEXTS]
    for first in range(0, len(rows), batch):
        feats = _encode(sae, reader, rows[first : first + batch])  # [b, n_ctx, d_sae]
        counts += (feats[:, start:] > 0).sum(dim=(0, 1)).cpu()
    order = torch.argsort(counts, descending=True, stable=True)
    return order[:n].tolist()


def prompt_features(sae: SAE, reader: Reader, prompts: Sequence[str], start: int = 1) -> list[int]:
    """Union of the ``PER_PROMPT`` features with the largest max activation on each prompt
    (BOS first; its activations count only with ``start=0``)."""
    tokenizer = reader.model.tokenizer
    chosen: set[int] = set()
    for text in prompts:
        ids = tokenizer(str(text), add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"prompt {text!r} has no tokens")
        tokens = torch.tensor([[tokenizer.bos_token_id, *ids]], dtype=torch.long)
        peak = _encode(sae, reader, tokens)[0, start:].amax(dim=0).cpu()  # [d_sae]
        top = torch.topk(peak, min(PER_PROMPT, sae.d_sae))
        chosen.update(top.indices[top.values > 0].tolist())
    if not chosen:
        raise ValueError(f"no feature fires on the prompts {list(prompts)}")
    return sorted(chosen)


def _parse_prompts(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        return [p.strip() for p in text[1:-1].split(",") if p.strip()]
    return [text]


def select_features(
    spec: Any,
    sae: SAE,
    reader: Reader,
    contexts: Int[Tensor, "n n_ctx"],
    drop_bos: bool = True,
) -> list[int]:
    """The feature indices that ``spec`` (the ``features=`` option) selects; ``top:N`` and
    ``prompts`` ignore the BOS position when ``drop_bos`` (as the analysis does).

    Raises:
        ValueError: For an index outside ``0..d_sae-1`` (the message names it and
            ``d_sae``), a malformed spec (the message lists the forms), or prompts on which
            no feature fires.
    """
    spec, start = _plain(spec), int(drop_bos)
    if spec == "all":
        return list(range(sae.d_sae))
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = [spec]
    if isinstance(spec, list):
        return _check_indices(spec, sae.d_sae)
    if isinstance(spec, dict) and set(spec) == {"prompts"}:
        prompts = spec["prompts"]
        prompts = [prompts] if isinstance(prompts, str) else prompts
        return prompt_features(sae, reader, prompts, start)
    if isinstance(spec, str) and spec.startswith("top:"):
        try:
            n = int(spec.removeprefix("top:"))
        except ValueError:
            raise ValueError(f"features={spec!r}: N in top:N must be an integer") from None
        return top_firing(sae, reader, contexts, n, start=start)
    if isinstance(spec, str) and spec.startswith("prompts:"):
        prompts = _parse_prompts(spec.removeprefix("prompts:"))
        return prompt_features(sae, reader, prompts, start)
    raise ValueError(f"features={spec!r} is not understood; valid: {FORMS}")


def check_spec(spec: Any) -> None:
    """Refuse a malformed ``features=`` before anything loads: its form, non-negative
    indices, ``top:N`` with N >= 1, prompts that are non-empty texts. (Whether an index is
    below ``d_sae`` is checked by :func:`select_features` once the SAE is loaded.)

    Raises:
        ValueError: Naming the bad value and the valid forms.
    """
    spec = _plain(spec)
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = [spec]
    if isinstance(spec, list):
        bad = [i for i in spec if isinstance(i, bool) or not isinstance(i, int) or i < 0]
        if bad:
            raise ValueError(f"features={spec!r}: {bad[0]!r} is not a feature index (0, 1, ...)")
        if not spec:
            raise ValueError("features=[] selects nothing; give at least one index or 'all'")
        return
    if isinstance(spec, str) and spec.startswith("top:"):
        n = spec.removeprefix("top:")
        if not n.strip().isdigit() or int(n) < 1:
            raise ValueError(f"features={spec!r}: N in top:N must be an integer >= 1")
        return
    prompts = None
    if isinstance(spec, dict) and set(spec) == {"prompts"}:
        prompts = spec["prompts"]
        prompts = [prompts] if isinstance(prompts, str) else prompts
    elif isinstance(spec, str) and spec.startswith("prompts:"):
        prompts = _parse_prompts(spec.removeprefix("prompts:"))
    elif spec == "all":
        return
    if prompts is None:
        raise ValueError(f"features={spec!r} is not understood; valid: {FORMS}")
    if not isinstance(prompts, list) or not prompts or any(not str(p).strip() for p in prompts):
        raise ValueError(
            f"features={spec!r}: prompts must be a non-empty list of non-empty texts, "
            "e.g. 'features=prompts:[import os,def main]'"
        )
