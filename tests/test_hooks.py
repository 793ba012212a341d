"""Every hook kind on tiny models of three families: capture, splice-back, logit weights."""

from __future__ import annotations

import pytest
import torch

from plugins._logits import logit_weights
from sae_lightning.hooks import capture_activations, edit_hook, hook_kind, residual_directions
from sae_lightning.spec import ActivationSpec

HOOKS = (
    "blocks.1.hook_resid_pre",
    "blocks.1.hook_resid_mid",
    "blocks.1.hook_resid_post",
    "blocks.1.hook_mlp_out",
    "blocks.1.hook_attn_out",
    "blocks.1.mlp.hook_pre",
    "blocks.1.mlp.hook_post",
    "blocks.1.attn.hook_z",
)


def _tokens(n: int = 3, pos: int = 12) -> torch.Tensor:
    return torch.randint(1, 4096, (n, pos), generator=torch.Generator().manual_seed(0))


def test_hook_kinds_by_name():
    assert hook_kind("blocks.3.hook_resid_post") == ("residual", 3)
    assert hook_kind("blocks.0.hook_attn_out") == ("residual", 0)
    assert hook_kind("blocks.2.mlp.hook_pre") == ("mlp", 2)
    assert hook_kind("blocks.1.attn.hook_z") == ("heads", 1)
    assert hook_kind("blocks.0.ln2.hook_normalized") == ("other", 0)
    assert hook_kind("hook_embed") == ("other", None)


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
@pytest.mark.parametrize("hook", HOOKS)
def test_splicing_the_captured_activation_back_changes_nothing(tiny_models, family, hook):
    model = tiny_models[family]
    if hook not in model.hook_dict:  # GPT-NeoX is parallel: no resid_mid
        assert family == "neox" and hook.endswith("resid_mid")
        return
    spec = ActivationSpec(model, hook, drop_bos=True)
    tokens = _tokens()
    with torch.inference_mode():
        clean, acts = spec.logits_and_capture(tokens)
        cfg = model.cfg
        width = {"heads": cfg.n_heads * cfg.d_head, "mlp": cfg.d_mlp}.get(spec.kind, cfg.d_model)
        assert acts.shape == (3, 12, width) and spec.d_in == width
        torch.testing.assert_close(acts, capture_activations(model, tokens, hook).float())
        same = spec.run_with_replacement(tokens, spec.with_trained(acts, spec.trained(acts)))
        zero = spec.with_trained(acts, torch.zeros_like(spec.trained(acts)))
        ablated = spec.run_with_replacement(tokens, zero)
    torch.testing.assert_close(same, clean, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ablated[:, 1:], clean[:, 1:], atol=1e-3)
    # BOS kept when dropped: position 0 sees nothing of the replacement
    torch.testing.assert_close(ablated[:, 0], clean[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_hook_z_is_flattened_head_major_like_w_o(tiny_models, family):
    """A change to head h's slice of the flattened hook_z moves attn_out by delta @ W_O[h]."""
    model = tiny_models[family]
    d_head = model.cfg.d_head
    tokens = _tokens(1, 8)
    delta = torch.randn(d_head, generator=torch.Generator().manual_seed(1))
    head, pos = 2, 5

    def nudge(x):  # [1, pos, n_heads * d_head]
        x = x.clone()
        x[0, pos, head * d_head : (head + 1) * d_head] += delta
        return x

    with torch.inference_mode():
        clean = capture_activations(model, tokens, "blocks.0.hook_attn_out")
        box: list[torch.Tensor] = []
        model.run_with_hooks(
            tokens,
            fwd_hooks=[
                ("blocks.0.attn.hook_z", edit_hook(nudge)),
                ("blocks.0.hook_attn_out", lambda a, hook: box.append(a.clone())),
            ],
        )
    w_o = model.blocks[0].attn.W_O[head]  # [d_head, d_model]
    change = box[0] - clean
    torch.testing.assert_close(change[0, pos], delta @ w_o, atol=1e-4, rtol=1e-4)
    assert change[0, :pos].abs().max() < 1e-5  # causal: earlier positions untouched


def _hf_state(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_logit_weights_use_the_models_own_w_out_and_w_o(tiny_models, tiny_model_dirs, family):
    """MLP and hook_z directions go through the model's own output weights (read here from
    the Hugging Face checkpoint, in its own orientation) to the same logits as the residual
    direction they write."""
    model, state = tiny_models[family], _hf_state(tiny_model_dirs[family])
    d_mlp, d_model = model.cfg.d_mlp, model.cfg.d_model
    n_z = model.cfg.n_heads * model.cfg.d_head
    gen = torch.Generator().manual_seed(2)
    w_mlp, w_z = torch.randn(5, d_mlp, generator=gen), torch.randn(5, n_z, generator=gen)
    if family == "gpt2":  # Conv1D: [in, out]
        w_out = state["transformer.h.1.mlp.c_proj.weight"]
        w_o = state["transformer.h.1.attn.c_proj.weight"]
    elif family == "neox":  # nn.Linear: [out, in]
        w_out = state["gpt_neox.layers.1.mlp.dense_4h_to_h.weight"].T
        w_o = state["gpt_neox.layers.1.attention.dense.weight"].T
    else:
        w_out = state["model.layers.1.mlp.down_proj.weight"].T
        w_o = state["model.layers.1.self_attn.o_proj.weight"].T
    resid = "blocks.1.hook_resid_post"
    for hook, w, to_resid in (
        ("blocks.1.mlp.hook_post", w_mlp, w_out),
        ("blocks.1.attn.hook_z", w_z, w_o),
    ):
        assert to_resid.shape[1] == d_model
        torch.testing.assert_close(residual_directions(model, hook, w), w @ to_resid)
        torch.testing.assert_close(
            logit_weights(model, hook, w), logit_weights(model, resid, w @ to_resid)
        )
    assert residual_directions(model, "blocks.1.attn.hook_q", w_z) is None
    assert logit_weights(model, "blocks.1.attn.hook_q", w_z) is None


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_logit_weights_follow_the_final_norm_kind(tiny_models, family):
    """LayerNorm (GPT-2): mean removal then its weight; RMSNorm (Llama): its weight only."""
    model = tiny_models[family]
    w = torch.randn(3, model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    got = logit_weights(model, "blocks.1.hook_resid_post", w)
    centred = w - w.mean(1, keepdim=True) if family == "gpt2" else w
    expected = (centred * model.ln_final.weight.float()) @ model.W_U.float()
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("hook", ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_attn_scores"])
def test_attention_patterns_are_refused_listing_the_accepted_kinds(tiny_models, hook):
    with pytest.raises(ValueError) as err:
        ActivationSpec(tiny_models["gpt2"], hook)
    message = str(err.value)
    assert hook in message and "not one vector per token" in message
    for kind in ("hook_resid_pre", "hook_mlp_out", "mlp.hook_post", "attn.hook_z"):
        assert kind in message


def test_unknown_hook_and_bad_n_ctx_are_named(tiny_models):
    model = tiny_models["gpt2"]
    with pytest.raises(ValueError, match="'blocks.9.hook_resid_post' is not a hook point"):
        ActivationSpec(model, "blocks.9.hook_resid_post")
    with pytest.raises(ValueError, match=r"n_ctx=65 must lie in 2\.\.64"):
        ActivationSpec(model, "blocks.0.hook_resid_post", n_ctx=65)


def test_half_precision_model_gives_float32_activations_close_to_float32(embedded_model):
    from sae_lightning.models import load_embedded

    bf16 = load_embedded(dtype="bfloat16")
    assert next(bf16.parameters()).dtype == torch.bfloat16
    tokens = _tokens(2, 32)
    with torch.inference_mode():
        for hook in ("blocks.0.mlp.hook_post", "blocks.0.attn.hook_z"):
            half = ActivationSpec(bf16, hook).capture(tokens)
            full = ActivationSpec(embedded_model, hook).capture(tokens)
            assert half.dtype == torch.float32
            rel = (half - full).norm() / full.norm()
            assert rel < 0.03, (hook, float(rel))
