"""SAELens-compatible export and import of SAEs.

A folder holds ``cfg.json`` and ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``,
``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``). Decoder norms are folded into
the weights on export, so every exported decoder row has unit norm. Loading reads
safetensors only: nothing pickled is ever executed.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from sae_lightning.saes import SAE, get_architecture, load_assigned

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
REQUIRED_METADATA: tuple[str, ...] = ("model_name", "hook_name", "context_size", "prepend_bos")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# Decoder rows whose norm is this close to 1 count as unit norm and are exported bit-exact:
# rescaling by a norm of 1 +- rounding would only perturb the weights.
UNIT_NORM_TOL = 1e-5


def fold_decoder_norms(sae: SAE, state: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The SAE's weights with each decoder row's norm moved into the encoder.

    ``W_dec_i /= n_i`` and feature ``i`` is scaled by ``n_i`` (for ReLU: ``W_enc[:, i] *= n_i``,
    ``b_enc_i *= n_i``; each architecture's ``scale_features`` knows its own rule), so the
    reconstruction is unchanged. Rows already of unit norm (within ``UNIT_NORM_TOL``) and
    rows of norm zero are left as they are.

    Args:
        sae: The SAE (its class decides how features scale).
        state: Weights to fold instead of ``sae``'s own (same names and shapes).

    Returns:
        Detached, contiguous CPU copies of the state dict, folded.
    """
    if state is None:
        state = sae.state_dict()
    state = {k: v.detach().clone().cpu().contiguous() for k, v in state.items()}
    norms = state["W_dec"].norm(dim=-1)  # [d_sae]
    keep = ((norms - 1).abs() <= UNIT_NORM_TOL) | (norms == 0)  # [d_sae]
    if bool(keep.all()):
        return state
    scale = torch.where(keep, torch.ones_like(norms), norms)  # [d_sae]
    folded = sae.scale_features(state, scale)
    return {k: v.contiguous() for k, v in folded.items()}


def fold_activation_scale(state: dict[str, Tensor], scale: float) -> dict[str, Tensor]:
    """Weights of an SAE trained on ``scale * x``, rewritten to read and return raw ``x``.

    ``(scale x - b_dec) W_enc = (x - b_dec / scale)(scale W_enc)`` and
    ``x_hat = (f W_dec + b_dec) / scale``: so ``W_enc *= scale``, ``W_dec /= scale``,
    ``b_dec /= scale``, and the codes are unchanged (for every architecture).
    """
    state = dict(state)
    state["W_enc"] = state["W_enc"] * scale
    state["W_dec"] = state["W_dec"] / scale
    state["b_dec"] = state["b_dec"] / scale
    return state


def exported(sae: SAE, activation_scale: float = 1.0) -> tuple[SAE, dict[str, Tensor]]:
    """The inference SAE for ``sae`` (``sae.for_export()``) and its weights with the activation
    scale and the decoder norms folded in (CPU copies; ``sae`` is not modified)."""
    target = sae.for_export()
    state = {k: v.detach().clone().cpu() for k, v in target.state_dict().items()}
    if activation_scale != 1.0:
        state = fold_activation_scale(state, activation_scale)
    return target, fold_decoder_norms(target, state)


def to_inference_sae(sae: SAE, activation_scale: float = 1.0) -> SAE:
    """A new SAE (CPU, eval mode) that reads raw activations: ``exported`` loaded into it."""
    target, state = exported(sae, activation_scale)
    with torch.device("meta"):
        fresh = type(target)(**_constructor_args(type(target), target.config(), Path("?")))
    return load_assigned(fresh, state).eval()


def save_saelens(
    sae: SAE, folder: str | Path, metadata: dict[str, Any], activation_scale: float = 1.0
) -> Path:
    """Write ``sae`` as an SAELens folder (``cfg.json`` + ``sae_weights.safetensors``).

    Args:
        sae: The SAE to export; it is not modified. A BatchTopK SAE is written as the
            JumpReLU SAE it is at inference (``for_export``).
        folder: Output folder, created if needed; existing files are overwritten.
        metadata: Must hold ``model_name``, ``hook_name``, ``context_size`` and
            ``prepend_bos``; any further JSON-serialisable keys are written too.
        activation_scale: The constant the training activations were multiplied by
            (``SAEModule.act_scale``); folded into the weights, so the export reads raw ones.

    Returns:
        The folder written.

    Raises:
        ValueError: If a required metadata key is missing.

    Example:
        >>> import tempfile
        >>> from sae_lightning.saes import ReLUSAE
        >>> meta = {"model_name": "toy-1l", "hook_name": "blocks.0.mlp.hook_post",
        ...         "context_size": 128, "prepend_bos": True}
        >>> folder = save_saelens(ReLUSAE(4, 8), tempfile.mkdtemp(), meta)
        >>> load_saelens(folder)[1]["metadata"]["hook_name"]
        'blocks.0.mlp.hook_post'
    """
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise ValueError(
            f"metadata is missing {missing}; SAELens needs {list(REQUIRED_METADATA)}, "
            f"got keys {sorted(metadata)}"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target, state = exported(sae, activation_scale)
    config = target.config()
    cfg = {
        "architecture": config.pop("architecture"),
        "d_in": config.pop("d_in"),
        "d_sae": config.pop("d_sae"),
        "dtype": str(state["W_enc"].dtype).removeprefix("torch."),
        "apply_b_dec_to_input": config.pop("apply_b_dec_to_input"),
        "normalize_activations": "none",
        **config,  # architecture-specific constructor arguments (e.g. k for TopK)
        "metadata": {**{k: metadata[k] for k in REQUIRED_METADATA}, **metadata},
    }
    (folder / CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(state, str(folder / WEIGHTS_FILE))
    return folder


def _read_cfg(path: Path) -> dict[str, Any]:
    """Parse ``cfg.json`` and check the keys every architecture needs."""
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(cfg).__name__}")
    for key in ("d_in", "d_sae"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{path}: {key} must be a positive integer, got {value!r}")
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise ValueError(
            f"{path}: normalize_activations={norm!r} is not supported; valid: 'none' "
            "(fold the normalisation into the weights before export)"
        )
    dtype = str(cfg.get("dtype", "float32")).removeprefix("torch.")
    if dtype not in DTYPES:
        raise ValueError(f"{path}: unknown dtype {cfg.get('dtype')!r}; valid: {sorted(DTYPES)}")
    return cfg


def _read_weights(path: Path) -> dict[str, Float[Tensor, "..."]]:
    """Load a safetensors file, turning a corrupt file into a clear ValueError."""
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from err


def _check_state(
    state: dict[str, Tensor], expected: dict[str, Tensor], where: Path, cfg: dict
) -> None:
    """Raise ValueError for missing, unexpected or wrongly shaped tensors."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{where} does not match architecture {cfg.get('architecture', 'standard')!r}: "
            f"missing tensors {missing}, unexpected tensors {unexpected}; "
            f"expected exactly {sorted(expected)}"
        )
    for name, ref in expected.items():
        got = tuple(state[name].shape)
        if got != tuple(ref.shape):
            raise ValueError(
                f"tensor {name} in {where} has shape {got}, but cfg.json "
                f"(d_in={cfg['d_in']}, d_sae={cfg['d_sae']}) expects {tuple(ref.shape)}"
            )


def _constructor_args(cls: type[SAE], cfg: dict[str, Any], where: Path) -> dict[str, Any]:
    """The arguments of ``cls``'s constructor that ``cfg.json`` provides (e.g. ``k``)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
    missing = [p.name for p in params if p.default is p.empty and p.name not in cfg]
    if missing:
        raise ValueError(
            f"{where} lacks {missing}, which architecture {cls.architecture!r} requires"
        )
    return {p.name: cfg[p.name] for p in params if p.name in cfg}


def load_saelens(folder: str | Path) -> tuple[SAE, dict[str, Any]]:
    """Load an SAELens folder written by ``save_saelens`` (or by SAELens itself).

    Args:
        folder: Folder holding ``cfg.json`` and ``sae_weights.safetensors``.

    Returns:
        The SAE in eval mode, on CPU, in ``cfg["dtype"]``; and the parsed ``cfg.json``.
        A cfg without ``architecture`` is read as ``"standard"``, as SAELens does.

    Raises:
        FileNotFoundError: If the folder or one of its two files is missing.
        ValueError: For an unknown architecture (the message lists the valid ones), an
            unsupported ``normalize_activations`` or dtype, corrupt files, or tensors whose
            names or shapes disagree with ``cfg.json``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"SAE folder {folder} does not exist (or is not a folder)")
    for name in (CFG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{name} not found in SAE folder {folder}; an SAELens export holds "
                f"{CFG_FILE} and {WEIGHTS_FILE}"
            )
    cfg = _read_cfg(folder / CFG_FILE)
    cls = get_architecture(cfg.get("architecture", "standard"))
    with torch.device("meta"):  # no allocation, no draw from the global RNG
        sae = cls(**_constructor_args(cls, cfg, folder / CFG_FILE))
    state = _read_weights(folder / WEIGHTS_FILE)
    _check_state(state, sae.state_dict(), folder / WEIGHTS_FILE, cfg)
    dtype = DTYPES[str(cfg.get("dtype", "float32")).removeprefix("torch.")]
    load_assigned(sae, {k: v.to(dtype) for k, v in state.items()})
    return sae.eval(), cfg
