from __future__ import annotations

import json
import time
from pathlib import Path

import einops
import torch
from hub_cache import run_isolated
from safetensors.torch import load_file, save_file

from sae_lightning.models import EMBEDDED_DIR, WEIGHTS_FILE, load_embedded
from sae_lightning.toy.lm import LMConfig, TinyLM

REFERENCE = Path(__file__).parent / "data" / "reference_logits.safetensors"
HOOK = "blocks.0.mlp.hook_post"


def test_embedded_model_is_frozen(embedded_model):
    assert not embedded_model.training
    params = list(embedded_model.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert embedded_model.cfg.n_layers == 1 and embedded_model.cfg.d_mlp == 1024
    assert (EMBEDDED_DIR / WEIGHTS_FILE).stat().st_size <= 12_000_000


def test_embedded_model_loads_quickly():
    load_embedded()  # imports warm
    start = time.perf_counter()
    load_embedded()
    # not a timing assertion on speed: a guard that loading does not retrain or download
    assert time.perf_counter() - start < 30


def test_reproduces_stored_reference_logits(embedded_model):
    ref = load_file(REFERENCE)
    with torch.inference_mode():
        logits = embedded_model(ref["tokens"])
    assert logits.shape == ref["logits"].shape
    torch.testing.assert_close(logits, ref["logits"], atol=1e-4, rtol=1e-4)


def test_training_module_computes_the_same_function(embedded_model):
    lm = TinyLM(LMConfig())
    lm.load_state_dict(load_file(EMBEDDED_DIR / WEIGHTS_FILE), strict=True)
    tokens = torch.randint(0, 4096, (2, 128), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(lm(tokens), embedded_model(tokens), atol=1e-4, rtol=1e-4)


def test_transformer_lens_api(embedded_model):
    text = "import os\nfor x in range(3):\n    pass\n"
    str_tokens = embedded_model.to_str_tokens(text)
    assert str_tokens[:3] == ["<|endoftext|>", "import", " os"]
    tokens = embedded_model.to_tokens(text)
    _, cache = embedded_model.run_with_cache(tokens, names_filter=HOOK)
    assert HOOK in cache.keys() and all(k.startswith("blocks.0.mlp") for k in cache.keys())
    assert cache[HOOK].shape == (1, len(str_tokens), 1024)
    clean = embedded_model(tokens, return_type="loss")
    calls = []

    def zero_mlp(act, hook):
        calls.append(hook.name)
        return torch.zeros_like(act)

    ablated = embedded_model.run_with_hooks(
        tokens, return_type="loss", fwd_hooks=[(HOOK, zero_mlp)]
    )
    assert len(calls) == 1  # fired once (the bridge names it by its alias blocks.0.mlp.out.hook_in)
    assert ablated.item() > clean.item() + 0.1


def test_hub_models_and_datasets_offline_give_one_clear_error(tmp_path):
    script = """
        from sae_lightning.data.sources import HFDatasetSource
        from sae_lightning.hub import HubUnavailableError
        from sae_lightning.models import load_hf, load_legacy, load_embedded
        tok = load_embedded().tokenizer
        def load_dataset(name):
            return HFDatasetSource(name).contexts("train", tok, 128)
        loads = ((load_legacy, "gelu-1l"), (load_hf, "gpt2"),
                 (load_dataset, "NeelNanda/c4-code-20k"))
        for load, name in loads:
            try:
                load(name)
            except HubUnavailableError as err:
                assert err.__cause__ is None and err.__suppress_context__, name
                print("MESSAGE", str(err).replace("\\n", " "))
            else:
                raise SystemExit(f"{name} loaded offline from an empty cache")
    """
    result = run_isolated(script, tmp_path / "hf")
    assert result.returncode == 0, result.stderr[-2000:]
    messages = [m for m in result.stdout.splitlines() if m.startswith("MESSAGE")]
    assert len(messages) == 3
    expected = (
        ("model 'gelu-1l'", "model=embedded"),
        ("model 'gpt2'", "model=embedded"),
        ("dataset 'NeelNanda/c4-code-20k'", "data=corpus"),
    )
    for (name, local), message in zip(expected, messages, strict=True):
        assert name in message and local in message, message
        assert "HF_HUB_OFFLINE is set" in message and "HF_HUB_OFFLINE=1" in message


def _legacy_property_state(state: dict[str, torch.Tensor], h: int) -> dict[str, torch.Tensor]:
    """Our bridge-format weights in the legacy TransformerLens property layout (W_Q, W_in, ...)."""
    out = {
        "embed.W_E": state["embed.weight"],
        "pos_embed.W_pos": state["pos_embed.weight"],
        "unembed.W_U": state["unembed.weight"].T,
        "unembed.b_U": state["unembed.bias"],
        "ln_final.w": state["ln_final.weight"],
        "ln_final.b": state["ln_final.bias"],
    }
    p = "blocks.0."
    for ln in ("ln1", "ln2"):
        out[f"{p}{ln}.w"], out[f"{p}{ln}.b"] = state[f"{p}{ln}.weight"], state[f"{p}{ln}.bias"]
    for x in "qkv":
        out[f"{p}attn.W_{x.upper()}"] = einops.rearrange(
            state[f"{p}attn.{x}.weight"], "(h d) m -> h m d", h=h
        )
        out[f"{p}attn.b_{x.upper()}"] = einops.rearrange(
            state[f"{p}attn.{x}.bias"], "(h d) -> h d", h=h
        )
    out[f"{p}attn.W_O"] = einops.rearrange(state[f"{p}attn.o.weight"], "m (h d) -> h d m", h=h)
    out[f"{p}attn.b_O"] = state[f"{p}attn.o.bias"]
    out[f"{p}mlp.W_in"], out[f"{p}mlp.b_in"] = (
        state[f"{p}mlp.in.weight"].T,
        state[f"{p}mlp.in.bias"],
    )
    out[f"{p}mlp.W_out"], out[f"{p}mlp.b_out"] = (
        state[f"{p}mlp.out.weight"].T,
        state[f"{p}mlp.out.bias"],
    )
    return {k: v.contiguous() for k, v in out.items()}


def test_legacy_loader_reads_a_populated_cache_offline(tmp_path, embedded_model):
    """The gelu-1l code path up to the network boundary: a cache laid out as the hub does."""
    repo = "NeelNanda/GELU_1L512W_C4_Code"
    snapshot = (
        tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    )
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    bc = json.loads((EMBEDDED_DIR / "config.json").read_text())["bridge_config"]
    config = {
        k: bc[k]
        for k in ("d_model", "n_layers", "d_mlp", "d_head", "n_heads", "n_ctx", "d_vocab", "act_fn")
    }
    config.update(
        attn_only=False, normalization_type="LN", tokenizer_name=str(EMBEDDED_DIR / "tokenizer")
    )
    (snapshot / "config.json").write_text(json.dumps(config))
    state = _legacy_property_state(load_file(EMBEDDED_DIR / WEIGHTS_FILE), bc["n_heads"])
    torch.save(state, snapshot / "GELU_1L512W_C4_Code_final.pth")
    tokens = torch.randint(0, 4096, (1, 16), generator=torch.Generator().manual_seed(1))
    save_file({"tokens": tokens}, str(tmp_path / "tokens.safetensors"))
    script = f"""
        import torch
        from safetensors.torch import load_file, save_file
        from sae_lightning.models import load_legacy
        model = load_legacy("gelu-1l")
        assert not any(p.requires_grad for p in model.parameters())
        tokens = load_file("{tmp_path}/tokens.safetensors")["tokens"]
        save_file({{"logits": model(tokens)}}, "{tmp_path}/logits.safetensors")
    """
    result = run_isolated(script, tmp_path / "hf")
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.inference_mode():
        expected = embedded_model(tokens)
    torch.testing.assert_close(
        load_file(tmp_path / "logits.safetensors")["logits"], expected, atol=1e-4, rtol=1e-4
    )
