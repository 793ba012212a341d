"""Feature splitting across dictionary sizes (*Towards Monosemanticity*, "feature splitting").

    python -m sae_lightning.replication.splitting SAE_512 SAE_4096 SAE_16384 out=DIR [key=value]

Reads two or more SAEs of growing ``d_sae`` on the same model and hook (anything
``analyze.py sae_path=`` accepts), runs the model over the tokens once to match every
feature of each dictionary to the next smaller one (activation correlation and decoder
cosine; :mod:`.splitting_tree` defines parents, children and families), and a second time
for the top tokens of the features in the concepts' family trees. Writes
``<out>/splitting.md``, ``<out>/splitting.html`` (the trees drawn) and
``<out>/splitting.json`` (every number), and prints the Markdown's path. Options (key=value)
in ``conf/splitting.yaml``, e.g. ``match=cosine threshold=0.6 tokens=200000``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from jaxtyping import Int
from omegaconf import DictConfig, open_dict
from torch import Tensor

from sae_lightning.analysis.loading import check_compatible, load_sae
from sae_lightning.analysis.run import load_contexts, resolve_drop_bos, vocab_strings
from sae_lightning.hooks import capture_activations, context_length, model_device
from sae_lightning.models import EMBEDDED_NAME, load_model_by_name
from sae_lightning.replication.concepts import concept_tokens
from sae_lightning.replication.splitting_labels import label_nodes
from sae_lightning.replication.splitting_report import write_html, write_markdown
from sae_lightning.replication.splitting_tree import (
    MEASURES,
    SplitAccumulator,
    concept_families,
    level_summary,
    match_level,
)
from sae_lightning.saes import SAE

log = logging.getLogger(__name__)

PROG = "python -m sae_lightning.replication.splitting"
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
JSON_FILE, MD_FILE, HTML_FILE = "splitting.json", "splitting.md", "splitting.html"
Loaded = list[tuple[SAE, dict[str, Any]]]


def check_dictionaries(loaded: Loaded) -> None:
    """Refuse SAEs that do not read the same model and hook, or do not grow in ``d_sae``.

    Raises:
        ValueError: Naming the SAE and the value that differs (or the sizes in order).
    """
    if len(loaded) < 2:
        raise ValueError(
            f"feature splitting needs two or more SAEs, smallest first; got {len(loaded)}"
        )
    (first, meta0), sources = loaded[0], [m.get("source") for _, m in loaded]
    for sae, meta in loaded[1:]:
        for key in ("model_name", "hook_name"):
            if meta.get(key) != meta0.get(key):
                raise ValueError(
                    f"SAE {meta.get('source')} has {key}={meta.get(key)!r} but "
                    f"{meta0.get('source')} has {meta0.get(key)!r}: feature splitting compares "
                    "dictionaries trained on the same model and hook"
                )
        if sae.d_in != first.d_in:
            raise ValueError(
                f"SAE {meta.get('source')} has d_in={sae.d_in} but {meta0.get('source')} "
                f"has d_in={first.d_in}: they do not read the same activations"
            )
    sizes = [sae.d_sae for sae, _ in loaded]
    if any(b <= a for a, b in pairwise(sizes)):
        raise ValueError(
            f"the SAEs must be given smallest dictionary first, each larger than the last; "
            f"got d_sae {sizes} for {sources}"
        )


def concept_table(concepts: Any, strings: Sequence[str]) -> tuple[dict[str, list[str]], Tensor]:
    """Each concept's token strings, and ``[d_vocab]`` long: the concept index of each token
    (``len(concepts)`` for none). A token string the tokenizer lacks is logged and skipped.

    Raises:
        ValueError: For a malformed concept, or a token claimed by two concepts.
    """
    named = {str(name): concept_tokens(spec) for name, spec in (concepts or {}).items()}
    ids: dict[str, list[int]] = {s: [] for s in strings}
    for i, s in enumerate(strings):
        ids[s].append(i)
    of_token = torch.full((len(strings),), len(named), dtype=torch.long)
    for c, (name, tokens) in enumerate(named.items()):
        for token in tokens:
            if token not in ids:
                log.warning("concept %r: %r is not a token of this tokenizer", name, token)
            for i in ids.get(token, []):
                if of_token[i] != len(named):
                    raise ValueError(f"token {token!r} is in two concepts; give it to one")
                of_token[i] = c
    return named, of_token


def _batches(
    model, hook: str, contexts: Int[Tensor, "n n_ctx"], batch_size: int, start: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(activations [n, d_in], token ids [n])`` per batch of contexts, BOS left out when
    ``start`` is 1."""
    device = model_device(model)
    for first in range(0, len(contexts), batch_size):
        tokens = contexts[first : first + batch_size].to(device)
        acts = capture_activations(model, tokens, hook)[:, start:]  # [b, pos, d_in]
        yield acts.flatten(0, 1), tokens[:, start:].flatten()


def _load(cfg: DictConfig, model=None):
    """The checked SAEs, the model and the hook."""
    loaded = [load_sae(p) for p in cfg.saes]
    check_dictionaries(loaded)
    meta = loaded[0][1]
    hook = cfg.get("hook_name") or meta.get("hook_name")
    if model is None:
        model = (
            instantiate(cfg.model)
            if cfg.get("model")
            else load_model_by_name(meta.get("model_name") or EMBEDDED_NAME)
        )
    for sae, metadata in loaded:
        check_compatible(sae, metadata, model, hook)
        sae.to(model_device(model))
    return loaded, model, hook


def _check_options(cfg: DictConfig) -> None:
    if cfg.match not in MEASURES:
        raise ValueError(f"match={cfg.match!r} is not a measure; valid: {list(MEASURES)}")
    if not -1.0 <= float(cfg.threshold) <= 1.0:
        raise ValueError(
            f"threshold={cfg.threshold!r} must lie in [-1, 1] (a correlation or cosine)"
        )
    for key in ("max_children", "top_tokens", "batch_size"):
        if int(cfg[key]) < 1:
            raise ValueError(f"{key}={cfg[key]!r} must be a positive integer")


def split_features(cfg: DictConfig, model=None) -> Path:
    """Match the dictionaries of ``cfg.saes``, draw the concepts' families; returns the
    Markdown report's path. ``model`` (optional) is used instead of loading one."""
    _check_options(cfg)
    loaded, model, hook = _load(cfg, model)
    saes, meta = [s for s, _ in loaded], loaded[0][1]
    n_ctx = context_length(model, cfg.data.get("n_ctx") or meta.get("context_size"), "data.n_ctx")
    contexts = load_contexts(cfg, model, n_ctx)
    start = int(resolve_drop_bos(cfg.get("drop_bos"), meta))
    strings = vocab_strings(model)
    concepts, of_token = concept_table(cfg.concepts, strings)
    acc = SplitAccumulator([s.d_sae for s in saes], of_token, len(concepts))
    acc.to(model_device(model))
    with torch.no_grad():
        for x, tokens in _batches(model, hook, contexts, cfg.batch_size, start):
            acc.update([s.encode(x.to(s.W_enc.dtype)) for s in saes], tokens)
    densities = [d.compute().cpu().tolist() for d in acc.densities]
    levels = [
        match_level(p, saes[k].W_dec, saes[k + 1].W_dec, cfg.match)
        for k, p in enumerate(acc.pearsons)
    ]
    families = concept_families(
        acc.concepts, concepts, levels, densities, cfg.threshold, cfg.max_children
    )
    trees = [f["tree"] for f in families.values() if f["tree"] is not None]
    batches = _batches(model, hook, contexts, cfg.batch_size, start)
    label_nodes(trees, saes, batches, strings, cfg.top_tokens)
    result = {
        "command": cfg.get("command"),
        "saes": [
            {"source": m.get("source"), "d_sae": s.d_sae, "architecture": s.architecture}
            for s, m in loaded
        ],
        "model_name": meta.get("model_name"),
        "hook_name": hook,
        "n_tokens": len(contexts) * (int(contexts.shape[1]) - start),
        "split": cfg.data.split,
        "match": cfg.match,
        "threshold": float(cfg.threshold),
        "summaries": [
            level_summary(lv, densities[k + 1], cfg.threshold) for k, lv in enumerate(levels)
        ],
        "families": {
            n: {**f, "tree": f["tree"].to_dict() if f["tree"] else None}
            for n, f in families.items()
        },
        "densities": densities,
        "levels": [vars(lv) for lv in levels],
    }
    return write(Path(cfg.out) if cfg.get("out") else _default_out(), result)


def _default_out() -> Path:
    return Path("outputs") / "splitting" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def write(out: Path, result: dict[str, Any]) -> Path:
    """``<out>/splitting.json`` (everything), ``splitting.md`` and ``splitting.html`` (the
    trees drawn); returns the Markdown's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_FILE).write_text(json.dumps(result, ensure_ascii=False))
    path = out / MD_FILE
    path.write_text(write_markdown(result))
    (out / HTML_FILE).write_text(write_html(result))
    log.info("feature splitting report: %s (all numbers: %s)", path, out / JSON_FILE)
    return path


def compose_config(argv: Sequence[str]) -> DictConfig:
    """``conf/splitting.yaml`` with ``argv``'s overrides; the other arguments (no ``=``, not
    ``~key``) are SAE paths, appended to ``saes``.

    Raises:
        ValueError: For an override Hydra cannot apply (an unknown key, a bad group option);
            Hydra's message names it.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    overrides = [a for a in argv if "=" in a or a.startswith("~")]  # ~key deletes a key
    paths = [a for a in argv if a not in overrides]
    try:
        if GlobalHydra.instance().is_initialized():  # inside a running Hydra app
            cfg = compose("splitting", overrides=overrides)
        else:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose("splitting", overrides=overrides)
    except HydraException as err:
        raise ValueError(f"{err} (options: conf/splitting.yaml)") from None
    with open_dict(cfg):
        cfg.saes = [*cfg.saes, *paths]
        cfg.command = " ".join([PROG, *argv])
    return cfg


def main(argv: Sequence[str] | None = None) -> Path:
    """The command line: compose the config, run, return the report's path."""
    from sae_lightning.cli import user_errors

    argv = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help"} & set(argv):
        sys.stdout.write(f"{__doc__}\n{(CONF_DIR / 'splitting.yaml').read_text()}")
        raise SystemExit(0)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with user_errors(PROG):
        cfg = compose_config(argv)
        return split_features(cfg)


if __name__ == "__main__":
    sys.stdout.write(f"{main()}\n")
