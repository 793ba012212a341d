"""``cfg.json`` as SAELens 6.x writes and reads it.

SAELens decides how to read a config by its version (``handle_config_defaulting`` in
``sae_lens/loading/pretrained_sae_loaders.py``): ``sae_lens_version`` at the top level, else
in ``metadata``; missing or below ``6.0.0-rc.0`` means a pre-6.0 config, whose ``metadata``
block is dropped and rebuilt from top-level keys (``handle_pre_6_0_config``). Otherwise
``SAEConfig.from_dict`` (``sae_lens/saes/sae.py``) keeps the fields of the architecture's
config class, fills their defaults, and keeps ``metadata`` as written.

Export writes a new-format config. Import reads both formats the way SAELens does and then
refuses every key, or value, whose effect on the numbers we would not reproduce exactly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from sae_lightning.saes import get_architecture

SAELENS_VERSION = "6.54.0"
"""The SAELens release whose config rules we follow (written as ``metadata.sae_lens_version``)."""
PRE_6_BELOW = Version("6.0.0-rc.0")
"""Configs without a version, or older than this, are read by SAELens as pre-6.0 ones."""
REQUIRED_METADATA: tuple[str, ...] = ("model_name", "hook_name", "context_size", "prepend_bos")
BASE_FIELDS: dict[str, Any] = {  # SAEConfig's fields below d_in/d_sae, with their defaults
    "dtype": "float32",
    "device": "cpu",
    "apply_b_dec_to_input": True,
    "normalize_activations": "none",
    "reshape_activations": "none",
}
ARCH_FIELDS: dict[str, dict[str, Any]] = {  # the extra fields of each architecture's config
    "standard": {},
    "jumprelu": {},
    "gated": {},
    "topk": {"k": 100, "rescale_acts_by_decoder_norm": False},
    "batchtopk": {"k": None, "threshold_momentum": None},  # ours only: SAELens writes jumprelu
    "matryoshka_batchtopk": {"k": None, "group_sizes": None, "threshold_momentum": None},  # same
    "crosscoder": {"n_sources": None, "k": None, "threshold_momentum": None},  # ours only
    **{  # TranscoderConfig: the output hook's fields (its metadata holds hook_name_out too)
        name: {"d_out": None, "hook_name_out": "", "hook_layer_out": 0, "hook_head_index_out": None}
        for name in ("transcoder", "skip_transcoder")
    },
}
HOOK_Z = re.compile(r"blocks\.\d+\.attn\.hook_z")
DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16")
# LLM_METADATA_KEYS of pretrained_sae_loaders.py: what the pre-6.0 path moves into metadata.
LLM_METADATA_KEYS = frozenset(
    "model_name hook_name model_class_name hook_head_index model_from_pretrained_kwargs "
    "prepend_bos exclude_special_tokens neuronpedia_id context_size seqpos_slice dataset_path "
    "sae_lens_version sae_lens_training_version hook_name_out hook_head_index_out hf_hook_name "
    "hf_hook_name_out".split()
)
LEGACY_RENAMES = {
    "hook_point": "hook_name",
    "hook_point_head_index": "hook_head_index",
    "activation_fn_str": "activation_fn",
}
# Pre-6.0 keys that change the numbers: checked one by one in _check_legacy_keys.
LEGACY_MATHS_KEYS = frozenset(
    {"activation_fn", "activation_fn_kwargs", "finetuning_scaling_factor", "finetuning_method"}
)
HARMLESS_KEYS = frozenset(
    LLM_METADATA_KEYS  # (hook_head_index, there or in metadata, is checked: null only)
    | {"hook_layer", "hook_point_layer", "hook_eval", "model_kwargs", "dataset_trust_remote_code"}
    # training-only settings of SAELens 5.x/6.x runner and training-SAE configs, and of the
    # 2024 configs: they shaped training, the inference maths does not read them
    | set(
        "streaming is_dataset_tokenized use_chat_formatting use_cached_activations "
        "cached_activations_path disable_concat_sequences sequence_separator_token "
        "activations_mixing_fraction n_batches_in_buffer training_tokens finetuning_tokens "
        "total_training_tokens store_batch_size store_batch_size_prompts tokens_per_buffer "
        "train_batch_size train_batch_size_tokens n_batches_for_norm_estimate seed "
        "act_store_device llm_device prefetch_llm_batches autocast autocast_lm compile_llm "
        "llm_compilation_mode compile_sae sae_compilation_mode b_dec_init_method "
        "expansion_factor from_pretrained_path normalize_sae_decoder noise_scale "
        "decoder_orthogonal_init decoder_heuristic_init decoder_heuristic_init_norm "
        "decoder_init_norm init_encoder_as_decoder_transpose jumprelu_init_threshold "
        "jumprelu_bandwidth jumprelu_sparsity_loss_mode jumprelu_tanh_scale "
        "jumprelu_ste_to_input l0_coefficient l0_warm_up_steps pre_act_loss_coefficient "
        "target_l0 topk_threshold_lr use_sparse_activations aux_loss_coefficient "
        "mse_loss_normalization l1_coefficient lp_norm l1_warm_up_steps "
        "scale_sparsity_penalty_by_decoder_norm adam_beta1 adam_beta2 lr lr_scheduler_name "
        "lr_warm_up_steps lr_end lr_decay_steps n_restart_cycles use_ghost_grads "
        "feature_sampling_window feature_sampling_method resample_batches feature_reinit_scale "
        "dead_feature_window dead_feature_estimation_method dead_feature_threshold "
        "n_eval_batches eval_batch_size_prompts log_to_wandb log_activations_store_to_wandb "
        "log_optimizer_state_to_wandb wandb_project wandb_id wandb_entity wandb_log_frequency "
        "eval_every_n_wandb_logs run_name logger resume resume_from_checkpoint n_checkpoints "
        "checkpoint_path save_final_checkpoint output_path verbose".split()
    )
)
"""Top-level keys known not to change what the SAE computes (``device`` is a field)."""
NORMALIZE_REFUSALS = {
    "expected_average_only_in": "its scaling factor is not recorded in cfg.json (SAELens folds "
    "it only from its pretrained_saes.yaml norm_scaling_factor; load_from_disk ignores it)",
    "constant_norm_rescale": "it rescales each token to norm sqrt(d_in), which no weights fold",
    "layer_norm": "it layer-normalises each token, which no weights fold",
    "covariance_whitening": "its mean and whitening matrix are not recorded in cfg.json",
}


def is_hook_z(hook_name: object) -> bool:
    """Whether ``hook_name`` is a per-head ``blocks.L.attn.hook_z`` (flattened head-major)."""
    return isinstance(hook_name, str) and bool(HOOK_Z.fullmatch(hook_name))


def export_cfg(config: dict[str, Any], dtype: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """A new-format SAELens ``cfg.json`` for an SAE whose ``config()`` is ``config``.

    Every field of the architecture's SAELens config is written (``rescale_acts_by_decoder_norm``
    false: exports have unit-norm decoder rows folded in), ``reshape_activations`` is
    ``hook_z`` for ``attn.hook_z`` hooks (our flattening is SAELens' ``(n_heads d_head)``),
    and ``metadata`` carries ``sae_lens_version`` so that SAELens keeps it.
    """
    config = dict(config)
    architecture = config.pop("architecture")
    return {
        "architecture": architecture,
        "d_in": config.pop("d_in"),
        "d_sae": config.pop("d_sae"),
        **BASE_FIELDS,
        "dtype": dtype,
        "apply_b_dec_to_input": config.pop("apply_b_dec_to_input"),
        "reshape_activations": "hook_z" if is_hook_z(metadata["hook_name"]) else "none",
        **ARCH_FIELDS.get(architecture, {}),
        **config,  # architecture-specific constructor arguments (k for TopK)
        **_output_hook(architecture, metadata),
        "metadata": {
            **{k: metadata[k] for k in REQUIRED_METADATA},
            "hook_head_index": None,
            "sae_lens_training_version": None,  # not trained by SAELens
            **metadata,
            "sae_lens_version": SAELENS_VERSION,
        },
    }


def saelens_version(cfg: dict[str, Any], where: Path) -> Version | None:
    """The ``sae_lens_version`` SAELens finds (top level first, then metadata), or None."""
    version = cfg.get("sae_lens_version")
    metadata = cfg.get("metadata")
    if not version and isinstance(metadata, dict):
        version = metadata.get("sae_lens_version")
    if not version:
        return None
    try:
        return Version(str(version))
    except InvalidVersion:
        raise ValueError(
            f"{where}: sae_lens_version {version!r} is not a version number (e.g. "
            f"{SAELENS_VERSION!r})"
        ) from None


def migrate_pre_6(cfg: dict[str, Any]) -> dict[str, Any]:
    """``handle_pre_6_0_config``: renames, defaults, TopK by activation_fn, metadata rebuilt.

    Unlike SAELens, a ``metadata`` block of the file (sae-lightning exports from before
    ``sae_lens_version`` was written) is kept, over the top-level keys: it changes no numbers.
    """
    new = {LEGACY_RENAMES.get(k, k): v for k, v in cfg.items()}
    for key, value in (("prepend_bos", True), ("apply_b_dec_to_input", True),
                       ("architecture", "standard"), ("device", "cpu")):  # fmt: skip
        new.setdefault(key, value)
    hook_z = "hook_z" in str(new.get("hook_name") or "")
    new.setdefault("reshape_activations", "hook_z" if hook_z else "none")
    kwargs = new.get("activation_fn_kwargs") or {}
    if new.get("activation_fn") == "topk" and isinstance(kwargs, dict) and kwargs.get("k"):
        new["architecture"], new["k"] = "topk", kwargs["k"]
    norm = new.get("normalize_activations")
    if isinstance(norm, bool) or norm is None:
        new["normalize_activations"] = "expected_average_only_in" if norm else "none"
    block = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    new["metadata"] = {**{k: v for k, v in new.items() if k in LLM_METADATA_KEYS}, **block}
    return new


def read_cfg(raw: dict[str, Any], where: Path) -> dict[str, Any]:
    """``raw`` (a parsed ``cfg.json``) as SAELens 6.x reads it, with its fields' defaults.

    Raises:
        ValueError: For a key, or a value, whose effect we would not reproduce exactly: the
            message names it and what would be valid.
    """
    version = saelens_version(raw, where)
    legacy = version is None or version < PRE_6_BELOW
    cfg = migrate_pre_6(raw) if legacy else dict(raw)
    if "architecture" not in cfg:
        raise ValueError(
            f"{where}: a SAELens {version} config needs 'architecture'; "
            f"valid: {sorted(ARCH_FIELDS)}"
        )
    architecture = cfg["architecture"]
    get_architecture(architecture)  # unknown -> ValueError listing the valid ones
    fields = ARCH_FIELDS.get(architecture, {})
    known = {"architecture", "metadata", "d_in", "d_sae", *BASE_FIELDS, *fields}
    unknown = sorted(set(cfg) - known - HARMLESS_KEYS - LEGACY_MATHS_KEYS)
    if unknown:
        raise ValueError(
            f"{where}: keys {unknown} are neither read by SAELens for architecture "
            f"{architecture!r} ({sorted(known)}) nor known to be harmless metadata "
            "(sae_lightning.saelens_cfg.HARMLESS_KEYS), so their effect cannot be honoured"
        )
    cfg = {**BASE_FIELDS, **{k: v for k, v in fields.items() if v is not None}, **cfg}
    if not isinstance(cfg.get("metadata", {}), dict):
        raise ValueError(f"{where}: metadata must be a JSON object, got {cfg['metadata']!r}")
    metadata = cfg.get("metadata", {})
    cfg["metadata"] = {"sae_lens_version": str(version) if version else None, **metadata}
    _check_values(cfg, where)
    _check_legacy_keys(cfg, where)
    return cfg


def _output_hook(architecture: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """A transcoder's output-hook fields from ``metadata["hook_name_out"]`` ({} for SAEs)."""
    if "d_out" not in ARCH_FIELDS.get(architecture, {}):
        return {}
    name = metadata.get("hook_name_out")
    if not name:
        raise ValueError(
            f"a {architecture} export needs metadata['hook_name_out'] (the hook it "
            f"reconstructs), got {name!r}"
        )
    layer = re.match(r"blocks\.(\d+)\.", name)
    return {"hook_name_out": name, "hook_layer_out": int(layer.group(1)) if layer else 0}


def _check_values(cfg: dict[str, Any], where: Path) -> None:
    """Refuse values of the SAELens fields that we do not reproduce."""
    if cfg.get("hook_head_index_out") is not None:
        raise ValueError(
            f"{where}: hook_head_index_out={cfg['hook_head_index_out']!r} (a transcoder "
            "writing one attention head) is not supported; valid: null"
        )
    for key in ("d_in", "d_sae", *(["d_out"] if "d_out" in cfg else [])):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: {key} must be a positive integer, got {value!r}")
    if str(cfg["dtype"]).removeprefix("torch.") not in DTYPE_NAMES:
        raise ValueError(f"{where}: unknown dtype {cfg['dtype']!r}; valid: {list(DTYPE_NAMES)}")
    for key in ("apply_b_dec_to_input", "rescale_acts_by_decoder_norm"):
        if key in cfg and not isinstance(cfg[key], bool):
            raise ValueError(f"{where}: {key} must be true or false, got {cfg[key]!r}")
    norm = cfg["normalize_activations"]
    if norm != "none":
        why = NORMALIZE_REFUSALS.get(norm, "SAELens does not know it")
        raise ValueError(
            f"{where}: normalize_activations={norm!r} is not supported; valid: 'none' (fold "
            f"the normalisation into the weights before export). Here {why}"
        )
    hook = cfg["metadata"].get("hook_name")
    reshape = cfg["reshape_activations"]
    if reshape not in ("none", "hook_z") or (reshape == "hook_z" and not is_hook_z(hook)):
        raise ValueError(
            f"{where}: reshape_activations={reshape!r} with hook_name {hook!r} is not supported; "
            "valid: 'none', or 'hook_z' for a blocks.L.attn.hook_z hook (flattened head-major)"
        )
    heads = [cfg.get("hook_head_index"), cfg["metadata"].get("hook_head_index")]
    heads = [head for head in heads if head is not None]
    if heads:
        raise ValueError(
            f"{where}: hook_head_index={heads[0]!r} (an SAE of one attention head) is not "
            "supported; valid: null (our per-head hooks are read with every head, flattened)"
        )


def _check_legacy_keys(cfg: dict[str, Any], where: Path) -> None:
    """Refuse pre-6.0 settings that change the numbers: activation functions other than ReLU
    (or TopK for a topk SAE), a fine-tuning scaling factor."""
    fn = cfg.get("activation_fn", "relu")
    valid_fn = ("relu", "topk") if cfg["architecture"] == "topk" else ("relu",)
    if fn not in valid_fn:
        raise ValueError(
            f"{where}: activation_fn={fn!r} is not supported for architecture "
            f"{cfg['architecture']!r}; valid: {list(valid_fn)}"
        )
    kwargs = cfg.get("activation_fn_kwargs") or {}
    allowed = {"k": cfg.get("k")} if cfg["architecture"] == "topk" else {}
    if not isinstance(kwargs, dict) or any(
        k not in allowed or allowed[k] != kwargs[k] for k in kwargs
    ):
        raise ValueError(
            f"{where}: activation_fn_kwargs={kwargs!r} is not supported; valid: {allowed} or {{}}"
        )
    for key in ("finetuning_scaling_factor", "finetuning_method"):
        if cfg.get(key):
            raise ValueError(
                f"{where}: {key}={cfg[key]!r} (a fine-tuned scaling of the codes) is not "
                "supported; valid: false or null"
            )
