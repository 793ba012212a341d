"""Load an SAE for analysis from any of the forms we accept, and check it fits the model.

Accepted forms of ``path``:

- a training run folder (``outputs/<date>/<time>``, holding ``sae/cfg.json``);
- an exported SAELens folder (``cfg.json`` + ``sae_weights.safetensors``);
- a Lightning checkpoint (``.ckpt``) written by ``SAEModule`` (it holds ``sae_config``);
- a ``.pt`` state dict in the format of Neel Nanda's 1L-Sparse-Autoencoder, next to its
  ``<stem>_cfg.json``;
- ``hf://<owner>/<repo>[@<revision>]/<path-in-repo>``: either of the last two forms in a
  Hugging Face repo, fetched through the hub cache (:mod:`.hub_sae`), e.g.
  ``hf://NeelNanda/sparse_autoencoder/25.pt``.

Nothing pickled is ever executed: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from sae_lightning.analysis.hub_sae import fetch_hub_sae, is_hf_uri
from sae_lightning.formats import CFG_FILE, WEIGHTS_FILE, load_saelens, to_inference_sae
from sae_lightning.hooks import DEFAULT_HOOK
from sae_lightning.saes import SAE, ReLUSAE, build_sae, load_assigned
from sae_lightning.spec import ActivationSpec

log = logging.getLogger(__name__)

ACCEPTED = (
    "a training run folder (with sae/cfg.json), an SAELens folder (cfg.json + "
    "sae_weights.safetensors), a Lightning .ckpt written by train.py, or a .pt state dict of "
    "Neel Nanda's 1L-Sparse-Autoencoder with its <stem>_cfg.json, or hf://<owner>/<repo>/<path> "
    "naming either of the last two in a Hugging Face repo"
)
NO_RUN = "run `python train.py` first or pass sae_path=PATH"
# Neel Nanda's ``site`` names -> TransformerLens hook names (``utils.get_act_name``)
NEEL_SITES: dict[str, str] = {
    "post": "blocks.{layer}.mlp.hook_post",
    "pre": "blocks.{layer}.mlp.hook_pre",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
}
NEEL_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def _safe_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only.

    Raises:
        ValueError: Naming the file: empty, truncated, unreadable, or "not a safe
            checkpoint" when it holds pickled objects (never torch's advice to unpickle it).
    """
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is empty (0 bytes): it was not written or copied completely")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            raise ValueError(_unreadable(path, size, err)) from None
        named = re.search(r"GLOBAL (\S+)", str(err))
        what = f" (it names {named.group(1)})" if named else ""
        raise ValueError(
            f"{path} is not a safe checkpoint: it holds pickled objects that are not plain "
            f"tensors{what}; it was not loaded"
        ) from None  # torch's message advises weights_only=False: never follow it here
    except Exception as err:  # noqa: BLE001  (every failure becomes one clear message)
        raise ValueError(_unreadable(path, size, err)) from None


def _unreadable(path: Path, size: int, err: Exception) -> str:
    """The message for a checkpoint torch cannot read: truncated when it is."""
    with path.open("rb") as fh:
        zipped = fh.read(4) == b"PK\x03\x04"  # torch.save's format since 1.6
        fh.seek(max(0, size - 65_557))  # the end record lies in the last 64 KiB + 22 bytes
        ended = b"PK\x05\x06" in fh.read()
    if zipped and not ended:
        return (
            f"{path} is truncated ({size} bytes): a zip-format checkpoint whose end (the "
            "central directory) is missing; it was not written or copied completely"
        )
    text = str(err).splitlines()[0] if str(err) else ""
    if isinstance(err, EOFError) or "truncated" in text or "Ran out of input" in text:
        return f"{path} is truncated ({size} bytes): it ends in the middle of a checkpoint"
    return (
        f"{path} is not a readable PyTorch checkpoint ({size} bytes; {type(err).__name__}: "
        f"{text[:120]}): it is corrupt or in another format"
    )


def latest_run(root: str | Path = "outputs") -> Path:
    """The newest training run under ``root`` (a folder holding ``sae/cfg.json``).

    Raises:
        FileNotFoundError: If no run under ``root`` has an exported SAE.
    """
    root = Path(root)
    runs = [p.parent.parent for p in root.rglob(f"sae/{CFG_FILE}")] if root.is_dir() else []
    if not runs:
        raise FileNotFoundError(f"no trained SAE under {root}/: {NO_RUN}")
    return max(runs, key=lambda p: (p / "sae" / CFG_FILE).stat().st_mtime)


def _from_saelens(folder: Path) -> tuple[SAE, dict[str, Any]]:
    sae, cfg = load_saelens(folder)
    return sae, {"source": str(folder), **cfg.get("metadata", {})}


def _from_ckpt(path: Path) -> tuple[SAE, dict[str, Any]]:
    ckpt = _safe_load(path)
    if not isinstance(ckpt, dict) or "sae_config" not in ckpt or "state_dict" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"{path} is not an SAE checkpoint written by train.py: it needs 'sae_config' and "
            f"'state_dict' (with sae.* tensors), got {keys}"
        )
    config = dict(ckpt["sae_config"])
    prefix = "sae."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        with torch.device("meta"):  # no allocation, no draw from the global RNG
            sae = build_sae(config.pop("architecture", "standard"), **config)
        load_assigned(sae, state)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"{path}: its sae.* tensors do not fit sae_config {config}: {err}"
        ) from None
    scale = float(ckpt["state_dict"].get("act_scale", 1.0))  # trained on normalised acts
    sae = to_inference_sae(sae, scale) if scale != 1.0 else sae
    return sae.eval(), {"source": str(path), **_ckpt_metadata(path, ckpt)}


def _ckpt_metadata(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """Metadata of a checkpoint: its hparams, else its run folder's export, else defaults."""
    meta: dict[str, Any] = {
        "model_name": "toy-1l",
        "hook_name": DEFAULT_HOOK,
        "context_size": None,
        "prepend_bos": True,
    }
    export = path.parent.parent / "sae" / CFG_FILE  # <run>/checkpoints/x.ckpt -> <run>/sae
    if path.parent.name == "checkpoints" and export.is_file():
        meta.update(json.loads(export.read_text()).get("metadata", {}))
    hparams = ckpt.get("hyper_parameters") or {}
    meta.update(
        {k: hparams[k] for k in ("model_name", "hook_name", "context_size") if k in hparams}
    )
    return meta


def _neel_hook(cfg: dict[str, Any], where: Path) -> str:
    if cfg.get("act_name"):
        return str(cfg["act_name"])
    site, layer = cfg.get("site", "post"), cfg.get("layer", 0)
    if site not in NEEL_SITES:
        raise ValueError(f"{where}: unknown site {site!r}; valid: {sorted(NEEL_SITES)}")
    return NEEL_SITES[site].format(layer=layer)


def _from_neel(path: Path) -> tuple[SAE, dict[str, Any]]:
    """Neel Nanda's AutoEncoder: ``relu((x - b_dec) @ W_enc + b_enc) @ W_dec + b_dec``."""
    cfg_path = path.with_name(f"{path.stem}_cfg.json")
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path} needs its config {cfg_path.name} next to it")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path} is not valid JSON: {err}") from None
    state = _safe_load(path)
    names = ("W_enc", "W_dec", "b_enc", "b_dec")
    if not isinstance(state, dict) or sorted(state) != sorted(names):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: a Neel-format state dict holds exactly {list(names)}, got {got}")
    d_in = int(cfg.get("d_mlp") or cfg.get("act_size") or state["W_enc"].shape[0])
    d_sae = int(cfg.get("dict_size") or d_in * int(cfg.get("dict_mult", 1)))
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise ValueError(
                f"{path}: {name} has shape {tuple(state[name].shape)}, but {cfg_path.name} "
                f"(d_in={d_in}, d_sae={d_sae}) expects {shape}"
            )
    dtype = NEEL_DTYPES.get(cfg.get("enc_dtype", "fp32"), torch.float32)
    with torch.device("meta"):
        sae = ReLUSAE(d_in, d_sae, apply_b_dec_to_input=True)
    load_assigned(sae, {k: v.to(dtype) for k, v in state.items()})
    metadata = {
        "source": str(path),
        "model_name": cfg.get("model_name", "gelu-1l"),
        "hook_name": _neel_hook(cfg, cfg_path),
        "context_size": cfg.get("seq_len"),
        "prepend_bos": True,
        "neel_cfg": cfg,
    }
    return sae.eval(), metadata


def load_sae(path: str | Path) -> tuple[SAE, dict[str, Any]]:
    """The SAE at ``path`` (in eval mode, on CPU) and its metadata.

    The metadata holds at least ``model_name``, ``hook_name``, ``context_size`` (None when
    unknown) and ``source`` (the file or folder read, or the ``hf://`` URI; then also
    ``hub_commit``, the commit of the files read).

    Raises:
        FileNotFoundError: If ``path`` does not exist (or is not in the hub repo it names).
        ValueError: If ``path`` is none of the accepted forms (the message lists them), or its
            contents are corrupt, mismatched, or would need unpickling code to load.
        HubUnavailableError: If an ``hf://`` SAE is not cached and the hub cannot be reached.
    """
    if is_hf_uri(path):
        local, commit = fetch_hub_sae(str(path))
        sae, metadata = _from_neel(local) if local.suffix == ".pt" else _from_saelens(local)
        return sae, {**metadata, "source": str(path), "hub_commit": commit}
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"SAE path {str(path)!r} does not exist; expected {ACCEPTED}")
    if path.is_dir() and (path / "sae" / CFG_FILE).is_file():
        return _from_saelens(path / "sae")
    if path.is_dir() and (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        return _from_saelens(path)
    if path.is_file() and path.suffix == ".ckpt":
        return _from_ckpt(path)
    if path.is_file() and path.suffix == ".pt":
        return _from_neel(path)
    raise ValueError(f"cannot read an SAE from {str(path)!r}; expected {ACCEPTED}")


def is_multi_source(metadata: dict[str, Any]) -> bool:
    """Whether an SAE's metadata names several sources (a crosscoder's ``metadata.sources``:
    one row reads several models or hooks at once)."""
    return bool(metadata.get("sources"))


def check_compatible(sae: SAE, metadata: dict[str, Any], model, hook_name: str) -> None:
    """Refuse an SAE that cannot read ``hook_name`` of ``model``.

    Raises:
        ValueError: If the hook does not exist (the message lists the valid ones), or the
            SAE's ``d_in`` differs from the hook's width (the message names both).
    """
    if is_multi_source(metadata):
        sources = metadata["sources"]
        raise ValueError(
            f"SAE {metadata.get('source', '')} is a {sae.architecture} over "
            f"{len(sources)} sources ({sources}): it reads several models or hooks at once, "
            f"not hook {hook_name!r} of one model, so it cannot be a compare_with= SAE; "
            f"analyse it on its own: python analyze.py sae_path={metadata.get('source', 'PATH')}"
        )
    width = ActivationSpec(model, hook_name).d_in  # the hook checked, its width probed
    if sae.d_in != width:
        source = metadata.get("source", "the SAE")
        raise ValueError(
            f"SAE {source} reads d_in={sae.d_in}, but hook {hook_name!r} of model "
            f"{metadata.get('model_name', '?')!r} has width {width}; analyse it with the model "
            f"and hook it was trained on (model=..., hook_name=...)"
        )
    trained_on = metadata.get("hook_name")
    if trained_on and trained_on != hook_name:
        log.warning("the SAE was trained on hook %r but is analysed on %r", trained_on, hook_name)
