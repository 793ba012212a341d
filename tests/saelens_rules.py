"""What SAELens 6.54.0 makes of a ``cfg.json``: an independent re-implementation for tests.

The library never imports this; it is the oracle our exports are checked against. It mirrors,
in the ``sae-lens==6.54.0`` wheel:

- ``sae_lens/loading/pretrained_sae_loaders.py``: ``get_sae_lens_config_from_disk`` (the file
  and the ``device`` override), ``handle_config_defaulting`` (``sae_lens_version`` at the top
  level, else in ``metadata``; none or below ``6.0.0-rc.0`` -> pre-6.0 path),
  ``handle_pre_6_0_config`` (renames, ``setdefault``s, TopK from ``activation_fn``, metadata
  rebuilt from ``LLM_METADATA_KEYS``: a ``metadata`` block is dropped);
- ``sae_lens/saes/sae.py``: ``SAEConfig`` (fields and defaults, the ``normalize_activations``
  check in ``__post_init__``), ``SAEConfig.from_dict`` (``architecture`` required, fields
  filtered as ``util.filter_valid_dataclass_fields`` does), ``SAEMetadata`` (the two version
  fields default to the running SAELens version);
- ``sae_lens/saes/topk_sae.py``: ``TopKSAEConfig`` (``k=100``,
  ``rescale_acts_by_decoder_norm=False``); standard, jumprelu and gated add no fields;
- ``sae_lens/__init__.py``: ``batchtopk`` and ``matryoshka_batchtopk`` are registered with
  ``register_sae_training_class`` only (no inference class: ``SAE.load_from_disk`` cannot read
  them); their training configs' ``get_inference_config_class`` is ``JumpReLUSAEConfig`` and
  ``process_state_dict_for_saving_inference`` turns ``topk_threshold`` into a per-latent
  ``threshold`` (``batchtopk_sae.py``; ``matryoshka_batchtopk_sae.py`` inherits both).
"""

from __future__ import annotations

from typing import Any

from packaging.version import Version

SAELENS = "6.54.0"
BASE = {
    "dtype": "float32",
    "device": "cpu",
    "apply_b_dec_to_input": True,
    "normalize_activations": "none",
    "reshape_activations": "none",
}
REGISTRY = {  # register_sae_class in sae_lens/__init__.py (the architectures we export)
    "standard": {},
    "gated": {},
    "jumprelu": {},
    "topk": {"k": 100, "rescale_acts_by_decoder_norm": False},
    # sae_lens/saes/transcoder.py: TranscoderConfig's output-hook fields (SkipTranscoderConfig
    # adds none; its W_skip is a tensor)
    **{
        name: {"d_out": 768, "hook_name_out": "", "hook_layer_out": 0, "hook_head_index_out": None}
        for name in ("transcoder", "skip_transcoder")
    },
}
SAVED_AS = {"batchtopk": "jumprelu", "matryoshka_batchtopk": "jumprelu"}
"""Training-only architectures -> the inference architecture SAELens saves them as."""
NORMALIZE = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm",
             "covariance_whitening")  # fmt: skip
LLM_METADATA_KEYS = {
    "model_name", "hook_name", "model_class_name", "hook_head_index",
    "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens", "neuronpedia_id",
    "context_size", "seqpos_slice", "dataset_path", "sae_lens_version",
    "sae_lens_training_version", "hook_name_out", "hook_head_index_out", "hf_hook_name",
    "hf_hook_name_out",
}  # fmt: skip


def is_pre_6(cfg: dict[str, Any]) -> bool:
    """``handle_config_defaulting``'s test."""
    version = cfg.get("sae_lens_version")
    if not version and "metadata" in cfg:
        version = cfg["metadata"].get("sae_lens_version")
    return not version or Version(version) < Version("6.0.0-rc.0")


def handle_pre_6_0_config(cfg: dict[str, Any]) -> dict[str, Any]:
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
               "activation_fn_str": "activation_fn"}  # fmt: skip
    new = {renames.get(k, k): v for k, v in cfg.items()}
    new.setdefault("prepend_bos", True)
    new.setdefault("dataset_trust_remote_code", True)
    new.setdefault("apply_b_dec_to_input", True)
    new.setdefault("finetuning_scaling_factor", False)
    new.setdefault("sae_lens_training_version", None)
    new.setdefault("activation_fn", new.get("activation_fn", "relu"))
    new.setdefault("architecture", "standard")
    new.setdefault("neuronpedia_id", None)
    hook_z = "hook_z" in new.get("hook_name", "")
    new.setdefault("reshape_activations", "hook_z" if hook_z else "none")
    k = new.get("activation_fn_kwargs", {}).get("k")
    if new.get("activation_fn") == "topk" and k is not None:
        new["architecture"], new["k"] = "topk", k
    if isinstance(new.get("normalize_activations"), bool):
        new["normalize_activations"] = (
            "expected_average_only_in" if new["normalize_activations"] else "none"
        )
    if new.get("normalize_activations") is None:
        new["normalize_activations"] = "none"
    new.setdefault("device", "cpu")
    architecture = new["architecture"]
    fields = {"d_in", "d_sae", *BASE, *REGISTRY[architecture]}
    out = {k: v for k, v in new.items() if k in fields}
    out["metadata"] = {k: v for k, v in new.items() if k in LLM_METADATA_KEYS}
    out["architecture"] = architecture
    return out


def saelens_reads(cfg: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """``SAE.load_from_disk``'s config: every field of the architecture's config class (with
    its default when absent), ``architecture`` and ``metadata`` (a plain dict)."""
    cfg = {**cfg, "device": device}
    if is_pre_6(cfg):
        cfg = handle_pre_6_0_config(cfg)
    architecture = cfg["architecture"]  # KeyError, as in SAELens
    defaults = {**BASE, **REGISTRY[architecture]}  # KeyError for an unknown architecture
    out = {"d_in": cfg["d_in"], "d_sae": cfg["d_sae"]}
    out.update({k: cfg.get(k, v) for k, v in defaults.items()})
    if out["normalize_activations"] not in NORMALIZE:
        raise ValueError(f"normalize_activations must be one of {NORMALIZE}")
    metadata = dict(cfg.get("metadata", {}))
    metadata.setdefault("sae_lens_version", SAELENS)
    metadata.setdefault("sae_lens_training_version", SAELENS)
    return {**out, "architecture": architecture, "metadata": metadata}
