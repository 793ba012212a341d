"""Load a frozen transformer: the embedded model, a legacy TransformerLens repo, or any
Hugging Face causal LM. Every loader returns a ``TransformerBridge`` in eval mode with
``requires_grad`` off on every parameter.
"""

from __future__ import annotations

import functools
import json
import logging
import platform
from pathlib import Path

import torch

from sae_lightning.cpu_bf16 import warn_emulated_model
from sae_lightning.hub import HubUnavailableError, hub_unavailable, is_hub_error

log = logging.getLogger(__name__)

EMBEDDED_NAME = "toy-1l"
"""The name the embedded model records (``cfg.model_name``) and is loaded by."""
ASSETS_DIR = Path(__file__).parent / "assets"
EMBEDDED_DIR = ASSETS_DIR / EMBEDDED_NAME
EMBEDDED_MODELS = (EMBEDDED_NAME, "toy-1l-b")
"""The shipped models, each in ``assets/<name>``: the same recipe, tokenizer and data, with
seeds 0 and 1 (two independent runs, for universality)."""
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"


ModelUnavailableError = HubUnavailableError
EMBEDDED_OPTION = "the embedded model (model=embedded)"


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    valid = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in valid:
        raise ValueError(f"dtype must be one of {sorted(valid)}, got {dtype!r}")
    return valid[dtype]


def move_model(model, device: str | torch.device, dtype: torch.dtype | None = None):
    """``model.to(device[, dtype])`` only when a parameter is elsewhere: TransformerLens'
    ``to`` prints "Moving model to device" on every call, wanted or not."""
    device = torch.device(device)
    params = list(model.parameters())
    stale = any(
        p.device.type != device.type
        or (device.index is not None and p.device.index != device.index)
        or (dtype is not None and p.dtype != dtype)
        for p in params
    )
    if not stale:
        return model
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, no gradients: the frozen model is only ever read. Warns when its weights are
    bfloat16 on a CPU that would emulate their products."""
    model.eval()
    model.requires_grad_(False)
    warn_emulated_model(model)
    return model


def embedded_dir(name: str = EMBEDDED_NAME) -> Path:
    """The folder of the shipped model ``name`` (one of :data:`EMBEDDED_MODELS`)."""
    if name not in EMBEDDED_MODELS:
        raise ValueError(
            f"unknown embedded model {name!r}; the shipped ones are {list(EMBEDDED_MODELS)}"
        )
    return ASSETS_DIR / name


def load_embedded(
    path: str | Path | None = None,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    name: str | None = None,
):
    """A model shipped with the package, by ``name`` (default ``toy-1l``; see
    :data:`EMBEDDED_MODELS`), or a folder written by ``pretrain.py`` (``path``)."""
    import transformer_lens.model_bridge.sources.native  # noqa: F401  (attaches boot_native)
    from safetensors.torch import load_file
    from transformer_lens.model_bridge import TransformerBridge

    from sae_lightning.toy.tokenizer import load_tokenizer

    if path is not None and name is not None:
        raise ValueError(
            f"give the embedded model a path or a name, not both (path={str(path)!r}, "
            f"name={name!r})"
        )
    folder = Path(path) if path is not None else embedded_dir(name or EMBEDDED_NAME)
    missing = [f for f in (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_DIR) if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(
            f"model folder {str(folder)!r} lacks {missing}; expected {WEIGHTS_FILE}, "
            f"{CONFIG_FILE} and {TOKENIZER_DIR}/ as written by pretrain.py"
        )
    config = json.loads((folder / CONFIG_FILE).read_text())
    check_corpus_python(config, platform.python_version())
    tokenizer = load_tokenizer(folder / TOKENIZER_DIR)
    bridge = TransformerBridge.boot_native(
        {**config["bridge_config"], "init_weights": False},
        tokenizer=tokenizer,
        model_name=config.get("name", EMBEDDED_NAME),
    )
    bridge.load_state_dict(load_file(folder / WEIGHTS_FILE), strict=True)
    return freeze(move_model(bridge, device, _dtype(dtype)))


def check_corpus_python(config: dict, running: str) -> bool:
    """Warn (once per model and version) when a model trained on the ``stdlib`` corpus is
    loaded by another Python minor version than the one that trained it: the standard
    library differs between versions, so the embedded corpus (and its held-out split, on
    which losses, analyses and the published replication numbers are measured) is not the
    one the model card describes. Returns whether they differ."""
    trained = str((config.get("metrics") or {}).get("python") or "")
    corpus = (config.get("recipe") or {}).get("corpus")
    differs = corpus == "stdlib" and bool(trained) and _minor(trained) != _minor(running)
    if differs:
        _warn_corpus_python(str(config.get("name", "?")), trained, running)
    return differs


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


@functools.cache
def _warn_corpus_python(name: str, trained: str, running: str) -> None:
    log.warning(
        "%s was trained on Python %s's standard library, but this is Python %s, whose "
        "standard library (the embedded corpus, data.source.corpus=stdlib) differs: held-out "
        "losses and analyses here are not comparable with the model card's or the published "
        "replication's numbers",
        name, trained, running,
    )  # fmt: skip


def resolve_legacy_name(name: str) -> str:
    """``gelu-1l`` -> ``NeelNanda/GELU_1L512W_C4_Code`` (TransformerLens' alias table)."""
    if "/" in name:
        return name
    import transformer_lens

    aliases = (
        Path(transformer_lens.__file__).parent / "tools/model_registry/data/model_aliases.json"
    )
    table = json.loads(aliases.read_text())["aliases"]
    for repo, names in table.items():
        if name in names:
            return repo
    raise ValueError(
        f"unknown legacy TransformerLens model {name!r}; use a repo id or an alias "
        f"such as 'gelu-1l'"
    )


def load_legacy(name: str = "gelu-1l", device: str = "cpu", dtype: str | torch.dtype = "float32"):
    """A legacy TransformerLens-format repo (``gelu-1l`` and its family), from the hub or cache.

    Unlike TransformerLens' own loader this one lists no repo files over the network, so a
    pre-populated cache works with ``HF_HUB_OFFLINE=1``.
    """
    from huggingface_hub import snapshot_download
    from transformer_lens.model_bridge.sources.tl_legacy import derive_tl_legacy_config
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    repo = resolve_legacy_name(name)
    try:
        folder = Path(snapshot_download(repo, allow_patterns=["config.json", "*final.pth"]))
        cfg = derive_tl_legacy_config(repo)
        tokenizer = _hf_tokenizer(cfg.tokenizer_name) if cfg.tokenizer_name else None
    except Exception as err:  # noqa: BLE001  (re-raised below unless it is a hub error)
        if is_hub_error(err):
            raise hub_unavailable("model", name, err, EMBEDDED_OPTION) from None
        raise
    weights = sorted(folder.glob("*final.pth"))
    if not weights:
        raise FileNotFoundError(f"no '*final.pth' weights in {str(folder)!r} for {repo!r}")
    torch_dtype = _dtype(dtype)
    state = torch.load(weights[0], map_location="cpu", weights_only=True)
    converted = convert_tl_checkpoint({k: v.to(torch_dtype) for k, v in state.items()}, cfg)
    converted.setdefault("unembed.bias", torch.zeros(cfg.d_vocab, dtype=torch_dtype))
    import transformer_lens.model_bridge.sources.native  # noqa: F401
    from transformer_lens.model_bridge import TransformerBridge

    cfg.init_weights = False
    bridge = TransformerBridge.boot_native(
        cfg, tokenizer=tokenizer, dtype=torch_dtype, model_name=repo
    )
    bridge.load_state_dict(converted, strict=True)
    return freeze(move_model(bridge, device))


def _hf_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def load_hf(name: str, device: str = "cpu", dtype: str | torch.dtype = "float32"):
    """Any Hugging Face causal LM by name, through ``TransformerBridge.boot_transformers``."""
    from transformer_lens.model_bridge import TransformerBridge

    try:
        bridge = TransformerBridge.boot_transformers(name, device=device, dtype=_dtype(dtype))
    except Exception as err:  # noqa: BLE001
        if is_hub_error(err):
            raise hub_unavailable("model", name, err, EMBEDDED_OPTION) from None
        raise
    return freeze(bridge)


def load_model_by_name(name: str, device: str = "cpu", dtype: str | torch.dtype = "float32"):
    """The frozen model an SAE's metadata names: a shipped one (``toy-1l``, ``toy-1l-b``), a
    legacy TransformerLens repo (``gelu-1l``, ``NeelNanda/...``), else a Hugging Face name or
    folder. A ``toy-...`` name that is neither shipped nor a folder is refused here, naming the
    shipped ones, rather than looked up on the hub."""
    if name in EMBEDDED_MODELS or (name.startswith("toy-") and not Path(name).exists()):
        return load_embedded(device=device, dtype=dtype, name=name)
    from transformer_lens.model_bridge.sources.tl_legacy import TL_LEGACY_PREFIXES

    try:
        repo = resolve_legacy_name(name)
    except ValueError:
        repo = name
    if repo.startswith(TL_LEGACY_PREFIXES):
        return load_legacy(repo, device=device, dtype=dtype)
    return load_hf(name, device=device, dtype=dtype)
