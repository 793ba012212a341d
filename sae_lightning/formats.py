"""SAELens-compatible export and import of SAEs.

A folder holds ``cfg.json`` and ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``,
``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``). Decoder norms are folded into
the weights on export, so every exported decoder row has unit norm. ``cfg.json`` follows
SAELens 6.x (``sae_lightning.saelens_cfg``); on import every key that changes the numbers is
honoured exactly or refused. Loading reads safetensors only: nothing pickled is executed.
A crosscoder, which SAELens does not have, is written in the same layout with its own fields
(``n_sources``; per-source names in ``metadata.sources``): see ``sae_lightning.saes.crosscoder``.
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

from sae_lightning.saelens_cfg import (  # noqa: F401  (SAELENS_VERSION: re-exported)
    REQUIRED_METADATA,
    SAELENS_VERSION,
    export_cfg,
    read_cfg,
)
from sae_lightning.saes import SAE, MatryoshkaSAE, get_architecture, load_assigned
from sae_lightning.saes.crosscoder import CrosscoderSAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
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
        if isinstance(target, CrosscoderSAE) and "threshold" in state:  # BatchTopK crosscoder:
            state["threshold"] = state["threshold"] / activation_scale  # on f * |W_dec|: x units
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
        sae: The SAE to export; it is not modified. A BatchTopK or Matryoshka SAE is
            written as the JumpReLU SAE it is at inference (``for_export``); a Matryoshka
            SAE's prefix widths go to ``metadata.matryoshka_widths``.
        folder: Output folder, created if needed; existing files are overwritten.
        metadata: Must hold ``model_name``, ``hook_name``, ``context_size`` and
            ``prepend_bos``; any further JSON-serialisable keys (``dataset_path``, ...) are
            written too. ``sae_lens_version`` is always ``SAELENS_VERSION``.
        activation_scale: The constant the training activations were multiplied by
            (``SAEModule.act_scale``); folded into the weights, so the export reads raw ones.

    Returns:
        The folder written.

    Raises:
        ValueError: If a required metadata key is missing, or the metadata says something
            the export cannot honour (e.g. a ``hook_head_index``).

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
    target, state = exported(sae, activation_scale)
    dtype = str(state["W_enc"].dtype).removeprefix("torch.")
    cfg = export_cfg(target.config(), dtype, {**metadata, **_architecture_metadata(sae, metadata)})
    read_cfg(cfg, folder / CFG_FILE)  # what we write, we read back (e.g. hook_head_index)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(state, str(folder / WEIGHTS_FILE))
    return folder


def _architecture_metadata(sae: SAE, metadata: dict[str, Any]) -> dict[str, Any]:
    """What the export's architecture cannot hold (a Matryoshka SAE's prefix widths, which its
    JumpReLU export drops; a crosscoder's sources), for ``cfg.json``'s metadata; SAELens
    keeps metadata as written."""
    if isinstance(sae, CrosscoderSAE):  # n_sources, d_source, sources: [{model_name, hook_name}]
        return sae.export_metadata(metadata)
    return sae.export_metadata() if isinstance(sae, MatryoshkaSAE) else {}


def _read_cfg(path: Path) -> dict[str, Any]:
    """Parse ``cfg.json`` and read it as SAELens does (``saelens_cfg.read_cfg``)."""
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(cfg).__name__}")
    return read_cfg(cfg, path)


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


def fold_rescale_acts(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Weights of an SAELens TopK SAE with ``rescale_acts_by_decoder_norm``, made plain.

    SAELens (``TopKSAE.encode``/``decode``, ``sae_lens/saes/topk_sae.py``) selects the top k
    of ``pre * n`` (``n_i = |W_dec_i|``) and decodes ``(f / n) @ W_dec``. With
    ``W_enc[:, i] *= n_i``, ``b_enc_i *= n_i`` and ``W_dec_i /= n_i`` the plain TopK SAE has
    those pre-activations, so the same latents, values and ``x_hat``. Folded in float64; a
    row of norm 0 stays 0 and its latent's pre-activation is 0, as in SAELens.
    """
    state = {k: v.double() for k, v in state.items()}
    norms = state["W_dec"].norm(dim=-1)  # [d_sae]
    state["W_enc"] = state["W_enc"] * norms  # [d_in, d_sae]
    state["b_enc"] = state["b_enc"] * norms  # [d_sae]
    state["W_dec"] = state["W_dec"] / torch.where(norms > 0, norms, 1.0)[:, None]
    return state


def _drop_unit_scaling_factor(state: dict[str, Tensor], where: Path) -> dict[str, Tensor]:
    """SAELens drops a ``scaling_factor`` tensor of ones (``read_sae_components_from_disk``);
    any other is a fine-tuned scale of the codes, which we refuse."""
    factor = state.pop("scaling_factor", None)
    if factor is not None and not torch.allclose(factor, torch.ones_like(factor)):
        raise ValueError(
            f"{where} holds a scaling_factor tensor that is not all ones (from "
            f"{factor.min().item():.4g} to {factor.max().item():.4g}): a fine-tuned scale of "
            "the codes is not supported; valid: no scaling_factor, or one of ones"
        )
    return state


def load_saelens(folder: str | Path) -> tuple[SAE, dict[str, Any]]:
    """Load an SAELens folder written by ``save_saelens`` (or by SAELens itself).

    ``cfg.json`` is read as SAELens 6.x reads it (pre-6.0 configs migrated, defaults
    filled); ``rescale_acts_by_decoder_norm`` is folded into the weights; every other key or
    value that would change the numbers is refused (``saelens_cfg.read_cfg``).

    Args:
        folder: Folder holding ``cfg.json`` and ``sae_weights.safetensors``.

    Returns:
        The SAE in eval mode, on CPU, in ``cfg["dtype"]``; and ``cfg.json`` as SAELens reads
        it (every field of the architecture's config, and ``metadata``).

    Raises:
        FileNotFoundError: If the folder or one of its two files is missing.
        ValueError: For an unknown architecture (the message lists the valid ones), a key or
            value that cannot be honoured (the message names it), corrupt files, or tensors
            whose names or shapes disagree with ``cfg.json``.
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
    cls = get_architecture(cfg["architecture"])
    with torch.device("meta"):  # no allocation, no draw from the global RNG
        sae = cls(**_constructor_args(cls, cfg, folder / CFG_FILE))
    state = _drop_unit_scaling_factor(_read_weights(folder / WEIGHTS_FILE), folder / WEIGHTS_FILE)
    _check_state(state, sae.state_dict(), folder / WEIGHTS_FILE, cfg)
    if cfg.get("rescale_acts_by_decoder_norm"):
        state = fold_rescale_acts(state)
    dtype = DTYPES[str(cfg["dtype"]).removeprefix("torch.")]
    load_assigned(sae, {k: v.to(dtype) for k, v in state.items()})
    return sae.eval(), cfg
