"""SAELens interop both ways: SAELens reads every field of our exports (checked against
``saelens_rules``, a re-implementation of its config reading, and against real SAELens when it
is installed); we honour exactly, or refuse, every SAELens key that changes the numbers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from saelens_rules import BASE, REGISTRY, SAVED_AS, is_pre_6, saelens_reads
from safetensors.torch import save_file

from sae_lightning.formats import CFG_FILE, WEIGHTS_FILE, load_saelens, save_saelens
from sae_lightning.saelens_cfg import SAELENS_VERSION
from sae_lightning.saes import ARCHITECTURES, SAE, JumpReLUSAE, TopKSAE, build_sae

META = {"model_name": "tiny-tl", "hook_name": "blocks.0.hook_resid_pre", "context_size": 16,
        "prepend_bos": False, "dataset_path": "some/dataset"}  # fmt: skip
needs_saelens = pytest.mark.skipif(
    importlib.util.find_spec("sae_lens") is None, reason="real SAELens (sae-lens) not installed"
)
SAELENS_META = {"sae_lens_version": "6.54.0", "sae_lens_training_version": "6.54.0",
                "model_name": "tiny-tl", "hook_name": "blocks.0.hook_resid_pre",
                "context_size": 16, "prepend_bos": True, "hook_head_index": None}  # fmt: skip
SAELENS_ARCHITECTURES = sorted(set(ARCHITECTURES) - {"crosscoder"})
"""Ours that SAELens reads (a crosscoder is ours only: test_crosscoder.py checks its format)."""


def meta_for(architecture: str) -> dict[str, Any]:
    """META, with the output hook a transcoder's export needs."""
    if architecture.endswith("transcoder"):
        return {**META, "hook_name_out": "blocks.0.hook_mlp_out"}
    return META


def make(architecture: str, d_in: int = 8, d_sae: int = 24) -> SAE:
    torch.manual_seed(0)
    extra = {"k": 4} if "topk" in architecture else {}
    extra = {"d_out": 5} if architecture.endswith("transcoder") else extra
    sae = build_sae(architecture, d_in=d_in, d_sae=d_sae, **extra)
    with torch.no_grad():
        sae.W_enc.add_(0.3 * torch.randn_like(sae.W_enc))
        for name, value in sae.named_parameters():
            if value.ndim == 1 and value.shape[0] == d_sae and name != "threshold":
                value.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
        if isinstance(sae, JumpReLUSAE):
            sae.threshold.uniform_(0.05, 0.3)
    sae.train()(torch.randn(64, d_in))  # BatchTopK: one training batch sets its threshold
    return sae.eval()


def saelens_folder(folder: Path, architecture: str, state: dict, **fields: Any) -> Path:
    """A folder laid out as SAELens 6.54's ``SAE.save_model`` writes it."""
    d_in, d_sae = state["W_enc"].shape
    cfg = {"d_in": d_in, "d_sae": d_sae, **BASE, "metadata": dict(SAELENS_META),
           **REGISTRY[architecture], "architecture": architecture, **fields}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CFG_FILE).write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / WEIGHTS_FILE))
    return folder


def topk_state(d_in: int = 32, d_sae: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    """TopK weights whose decoder rows have norms spread over [0.5, 2]."""
    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, d_in, generator=gen)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True) * torch.linspace(0.5, 2.0, d_sae)[:, None]
    return {"W_enc": 0.3 * torch.randn(d_in, d_sae, generator=gen), "W_dec": w_dec,
            "b_enc": 0.1 * torch.randn(d_sae, generator=gen),
            "b_dec": 0.5 * torch.randn(d_in, generator=gen)}  # fmt: skip


def topk_by_hand(state: dict, x: torch.Tensor, k: int, rescale: bool) -> tuple:
    """SAELens' TopKSAE.encode/decode written out, in float64: (codes, x_hat)."""
    s = {name: v.double() for name, v in state.items()}
    pre = (x.double() - s["b_dec"]) @ s["W_enc"] + s["b_enc"]  # [n, d_sae]
    norms = s["W_dec"].norm(dim=-1)  # [d_sae]
    pre = pre * norms if rescale else pre
    top = pre.topk(k, dim=-1)
    codes = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    return codes, (codes / norms if rescale else codes) @ s["W_dec"] + s["b_dec"]


@pytest.mark.parametrize("architecture", SAELENS_ARCHITECTURES)
def test_saelens_reads_every_field_of_our_export(architecture: str, tmp_path: Path) -> None:
    meta = meta_for(architecture)
    folder = save_saelens(make(architecture), tmp_path, meta)
    raw = json.loads((folder / CFG_FILE).read_text())
    view = saelens_reads(raw)
    assert not is_pre_6(raw) and raw["metadata"]["sae_lens_version"] == SAELENS_VERSION
    assert {k: view["metadata"][k] for k in meta} == meta  # prepend_bos False survives
    assert view["metadata"]["hook_head_index"] is None
    inference = SAVED_AS.get(architecture, architecture)
    assert view["architecture"] == inference
    fields = {"d_in", "d_sae", *BASE, *REGISTRY[inference]}
    assert fields <= set(raw)  # no field left to SAELens' default
    assert {k: view[k] for k in fields} == {k: raw[k] for k in fields}
    assert (view["normalize_activations"], view["reshape_activations"]) == ("none", "none")
    if inference == "topk":
        assert (view["k"], view["rescale_acts_by_decoder_norm"]) == (4, False)
    _, ours = load_saelens(folder)  # our reader agrees with SAELens' on every field
    assert {k: ours[k] for k in fields} == {k: view[k] for k in fields}
    assert ours["metadata"] == {k: v for k, v in view["metadata"].items()}


def test_without_a_version_saelens_drops_the_metadata(tmp_path: Path) -> None:
    """The bug: a cfg.json without sae_lens_version is read as pre-6.0 and loses metadata."""
    folder = save_saelens(make("standard"), tmp_path, META)
    raw = json.loads((folder / CFG_FILE).read_text())
    del raw["metadata"]["sae_lens_version"]
    view = saelens_reads(raw)
    assert is_pre_6(raw)
    assert "hook_name" not in view["metadata"] and "model_name" not in view["metadata"]
    assert view["metadata"]["prepend_bos"] is True  # forced, though we wrote False
    (folder / CFG_FILE).write_text(json.dumps(raw))  # such (older) exports still load here
    _, cfg = load_saelens(folder)
    assert cfg["metadata"]["hook_name"] == META["hook_name"]
    assert cfg["metadata"]["prepend_bos"] is False


@pytest.mark.parametrize(("hook", "reshape"), [("blocks.1.attn.hook_z", "hook_z"),
                                               ("blocks.1.attn.hook_q", "none")])  # fmt: skip
def test_reshape_activations_follows_the_hook(hook: str, reshape: str, tmp_path: Path) -> None:
    folder = save_saelens(make("standard"), tmp_path, {**META, "hook_name": hook})
    view = saelens_reads(json.loads((folder / CFG_FILE).read_text()))
    assert (view["reshape_activations"], view["metadata"]["hook_name"]) == (reshape, hook)
    assert load_saelens(folder)[1]["reshape_activations"] == reshape


def test_rescale_acts_by_decoder_norm_is_folded(tmp_path: Path) -> None:
    state = topk_state()
    folder = saelens_folder(tmp_path, "topk", state, k=8, rescale_acts_by_decoder_norm=True)
    sae, cfg = load_saelens(folder)
    assert isinstance(sae, TopKSAE) and cfg["rescale_acts_by_decoder_norm"] is True
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(256))
    x = torch.randn(512, 32, generator=torch.Generator().manual_seed(1))
    codes, x_hat = topk_by_hand(state, x, k=8, rescale=True)
    with torch.no_grad():
        ours = sae(x)
    assert torch.equal(ours.feature_acts > 0, codes > 0)  # the same latents on every token
    torch.testing.assert_close(ours.feature_acts.double(), codes, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.x_hat.double(), x_hat, atol=1e-5, rtol=1e-5)
    naive, _ = topk_by_hand(state, x, k=8, rescale=False)  # what ignoring the key selects
    differs = ((naive > 0) != (codes > 0)).any(-1).float().mean().item()
    assert differs > 0.9


def test_apply_b_dec_to_input_false_is_honoured(tmp_path: Path) -> None:
    state = topk_state(d_in=8, d_sae=24)
    state["W_dec"] = state["W_dec"] / state["W_dec"].norm(dim=-1, keepdim=True)
    folder = saelens_folder(tmp_path, "standard", state, apply_b_dec_to_input=False)
    sae, _ = load_saelens(folder)
    x = torch.randn(64, 8)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), torch.relu(x @ state["W_enc"] + state["b_enc"]))


def test_legacy_topk_config_is_migrated_as_saelens_does(tmp_path: Path) -> None:
    """A 5.x cfg.json: no version, hook_point, activation_fn_str topk with its k in kwargs."""
    state = topk_state(d_in=8, d_sae=24)
    folder = saelens_folder(tmp_path, "standard", state)
    raw = json.loads((folder / CFG_FILE).read_text())
    for key in ("metadata", "reshape_activations", "architecture"):
        del raw[key]
    raw.update({"hook_point": "blocks.2.hook_resid_post", "hook_point_layer": 2,
                "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3},
                "model_name": "gpt2", "context_size": 128, "lr": 4e-4,
                "normalize_activations": False, "finetuning_scaling_factor": False})  # fmt: skip
    (folder / CFG_FILE).write_text(json.dumps(raw))
    view = saelens_reads(raw)
    sae, cfg = load_saelens(folder)
    assert isinstance(sae, TopKSAE) and sae.k == 3 == view["k"] == cfg["k"]
    assert cfg["architecture"] == view["architecture"] == "topk"
    for key in ("hook_name", "model_name", "context_size", "prepend_bos"):
        assert cfg["metadata"][key] == view["metadata"][key], key
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    x = torch.randn(64, 8)
    with torch.no_grad():
        f = sae.encode(x)
    torch.testing.assert_close(f.double(), topk_by_hand(state, x, 3, rescale=False)[0])


def test_harmless_keys_and_a_unit_scaling_factor_are_accepted(tmp_path: Path) -> None:
    state = {**topk_state(d_in=8, d_sae=24), "threshold": torch.full((24,), 0.1)}
    harmless = {"device": "cuda:0", "neuronpedia_id": "gpt2/0-res", "seed": 42,
                "model_from_pretrained_kwargs": {"center_writing_weights": False}}  # fmt: skip
    folder = saelens_folder(tmp_path, "jumprelu", state, **harmless)
    save_file({**state, "scaling_factor": torch.ones(24)}, str(folder / WEIGHTS_FILE))
    sae, _ = load_saelens(folder)
    assert isinstance(sae, JumpReLUSAE) and torch.equal(sae.threshold, state["threshold"])


REFUSED: list[tuple[str, Any, str]] = [
    ("normalize_activations", "expected_average_only_in",
     r"normalize_activations='expected_average_only_in' is not supported.*scaling factor"),
    ("normalize_activations", "constant_norm_rescale", r"'constant_norm_rescale' is not supp"),
    ("normalize_activations", "layer_norm", r"normalize_activations='layer_norm' is not supp"),
    ("normalize_activations", "covariance_whitening", r"'covariance_whitening' is not supp"),
    ("normalize_activations", None, r"normalize_activations=None is not supported"),
    ("reshape_activations", "hook_z", r"reshape_activations='hook_z' with hook_name "
     r"'blocks.0.hook_resid_pre' is not supported; valid: 'none', or 'hook_z' for a"),
    ("reshape_activations", "heads", r"reshape_activations='heads'"),
    ("metadata.hook_head_index", 3, r"hook_head_index=3 \(an SAE of one attention head\)"),
    ("hook_head_index", 1, r"hook_head_index=1"),
    ("mystery_scale", 2.0, r"keys \['mystery_scale'\] are neither read by SAELens"),
    ("rescale_acts_by_decoder_norm", True, r"keys \['rescale_acts_by_decoder_norm'\]"),
    ("apply_b_dec_to_input", "yes", r"apply_b_dec_to_input must be true or false, got 'yes'"),
    ("activation_fn", "tanh-relu", r"activation_fn='tanh-relu' is not supported for arch"),
    ("activation_fn_kwargs", {"k": 5}, r"activation_fn_kwargs=\{'k': 5\} is not supported"),
    ("finetuning_scaling_factor", True, r"finetuning_scaling_factor=True .* not supported"),
    ("metadata.sae_lens_version", "six", r"sae_lens_version 'six' is not a version number"),
]  # fmt: skip


@pytest.mark.parametrize(("key", "value", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_keys_that_change_the_numbers_are_refused(
    key: str, value: Any, message: str, tmp_path: Path
) -> None:
    folder = save_saelens(make("standard"), tmp_path, META)
    raw = json.loads((folder / CFG_FILE).read_text())
    target, name = (raw["metadata"], key[9:]) if key.startswith("metadata.") else (raw, key)
    target[name] = value
    (folder / CFG_FILE).write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=message):
        load_saelens(folder)


def test_a_non_unit_scaling_factor_and_a_head_index_are_refused(tmp_path: Path) -> None:
    state = {**topk_state(d_in=8, d_sae=24), "scaling_factor": torch.full((24,), 2.0)}
    folder = saelens_folder(tmp_path, "standard", state)
    with pytest.raises(ValueError, match=r"scaling_factor tensor that is not all ones \(from 2 to"):
        load_saelens(folder)
    with pytest.raises(ValueError, match=r"hook_head_index=2"):  # nor do we write one
        save_saelens(make("standard"), tmp_path / "out", {**META, "hook_head_index": 2})
    assert not (tmp_path / "out").exists()


@needs_saelens
@pytest.mark.parametrize("architecture", SAELENS_ARCHITECTURES)
def test_real_saelens_loads_our_export(architecture: str, tmp_path: Path) -> None:
    from sae_lens import SAE as LensSAE

    folder = save_saelens(make(architecture), tmp_path, meta_for(architecture))
    lens = LensSAE.load_from_disk(folder)
    assert {k: lens.cfg.metadata[k] for k in META} == META
    if architecture.endswith("transcoder"):  # SAELens' Transcoder reads the output hook
        assert (lens.cfg.d_out, lens.cfg.hook_name_out) == (5, "blocks.0.hook_mlp_out")
    raw = json.loads((folder / CFG_FILE).read_text())
    assert lens.cfg.to_dict() == saelens_reads(raw)  # the re-implementation is faithful
    ours, _ = load_saelens(folder)
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        f_lens, f_ours = lens.encode(x), ours.encode(x)
        assert torch.equal(f_lens > 0, f_ours > 0)
        torch.testing.assert_close(f_lens, f_ours, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lens.decode(f_lens), ours.decode(f_ours), atol=1e-5, rtol=1e-5)


@needs_saelens
def test_real_saelens_drops_the_metadata_of_a_config_without_version(tmp_path: Path) -> None:
    from sae_lens import SAE as LensSAE

    folder = save_saelens(make("topk"), tmp_path, META)
    raw = json.loads((folder / CFG_FILE).read_text())
    del raw["metadata"]["sae_lens_version"]
    (folder / CFG_FILE).write_text(json.dumps(raw))
    lens = LensSAE.load_from_disk(folder)
    assert (lens.cfg.metadata.hook_name, lens.cfg.metadata.prepend_bos) == (None, True)
    expected = saelens_reads(raw)
    got = lens.cfg.to_dict()
    for version in ("sae_lens_version", "sae_lens_training_version"):  # (the running one)
        got["metadata"].pop(version), expected["metadata"].pop(version)
    assert got == expected


@needs_saelens
def test_real_saelens_topk_with_rescaled_acts_loads_here(tmp_path: Path) -> None:
    from sae_lens import TopKSAE as LensTopK
    from sae_lens import TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(**{k: v for k, v in SAELENS_META.items() if "version" not in k})
    cfg = TopKSAEConfig(d_in=32, d_sae=256, k=8, rescale_acts_by_decoder_norm=True, metadata=meta)
    lens = LensTopK(cfg)
    lens.load_state_dict(topk_state())
    lens.save_model(tmp_path)
    ours, _ = load_saelens(tmp_path)
    x = torch.randn(512, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f_lens, f_ours = lens.encode(x), ours.encode(x)
        assert torch.equal(f_lens > 0, f_ours > 0)
        torch.testing.assert_close(f_ours, f_lens, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.decode(f_ours), lens.decode(f_lens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture", sorted(SAVED_AS))
def test_training_only_architectures_are_written_as_saelens_saves_them(
    architecture: str, tmp_path: Path
) -> None:
    """SAELens has no inference class for batchtopk / matryoshka_batchtopk (KeyError in its
    registry): the export is the JumpReLU it saves them as; Matryoshka's prefix widths ride
    along in metadata, which SAELens keeps as written."""
    sae = make(architecture)
    folder = save_saelens(sae, tmp_path, META)
    raw = json.loads((folder / CFG_FILE).read_text())
    view = saelens_reads(raw)
    assert view["architecture"] == raw["architecture"] == "jumprelu"
    widths = view["metadata"].get("matryoshka_widths")
    assert widths == (list(sae.prefix_widths) if architecture.startswith("matryoshka") else None)
    with pytest.raises(KeyError, match=architecture):
        saelens_reads({**raw, "architecture": architecture})


@needs_saelens
def test_real_saelens_refuses_matryoshka_but_reads_its_export(tmp_path: Path) -> None:
    from sae_lens import SAE as LensSAE

    folder = save_saelens(make("matryoshka_batchtopk"), tmp_path, META)
    lens = LensSAE.load_from_disk(folder)
    assert lens.cfg.architecture() == "jumprelu"
    assert lens.cfg.metadata["matryoshka_widths"] == [1, 3, 6, 12, 24]  # default groups of 24
    raw = json.loads((folder / CFG_FILE).read_text())
    (folder / CFG_FILE).write_text(json.dumps({**raw, "architecture": "matryoshka_batchtopk"}))
    with pytest.raises(KeyError, match="matryoshka_batchtopk"):
        LensSAE.load_from_disk(folder)
