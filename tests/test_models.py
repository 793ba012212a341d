from __future__ import annotations

import json
import time
from pathlib import Path

import einops
import pytest
import torch
from hub_cache import run_isolated
from safetensors.torch import load_file, save_file

from sae_lightning.models import (
    EMBEDDED_DIR,
    EMBEDDED_MODELS,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    embedded_dir,
    load_embedded,
    load_model_by_name,
)
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


@pytest.fixture(scope="module")
def second_model():
    return load_embedded(name="toy-1l-b")


def test_second_model_shares_the_tokenizer_and_has_its_own_weights(embedded_model, second_model):
    first_dir, second_dir = embedded_dir("toy-1l"), embedded_dir("toy-1l-b")
    assert first_dir == EMBEDDED_DIR and EMBEDDED_MODELS == ("toy-1l", "toy-1l-b")
    files = sorted(p.name for p in (first_dir / TOKENIZER_DIR).iterdir())
    assert files == sorted(p.name for p in (second_dir / TOKENIZER_DIR).iterdir())
    for name in files:  # byte for byte: the two models share every token id
        assert (first_dir / TOKENIZER_DIR / name).read_bytes() == (
            second_dir / TOKENIZER_DIR / name
        ).read_bytes(), name
    assert second_model.tokenizer.get_vocab() == embedded_model.tokenizer.get_vocab()
    text = "import os\nfor x in range(3):\n    pass\n"
    assert torch.equal(second_model.to_tokens(text), embedded_model.to_tokens(text))
    assert (embedded_model.cfg.model_name, second_model.cfg.model_name) == ("toy-1l", "toy-1l-b")
    assert not any(p.requires_grad for p in second_model.parameters()) and not second_model.training
    first, second = embedded_model.state_dict(), second_model.state_dict()
    assert first.keys() == second.keys()
    for key in first:  # same shapes, independent runs: no weight matrix in common
        assert first[key].shape == second[key].shape, key
        if first[key].ndim == 2:  # independent matrices: |a - b| is about sqrt(2) |a|
            assert (first[key] - second[key]).norm() > 0.5 * first[key].norm(), key
    tokens = embedded_model.to_tokens(text)
    with torch.inference_mode():  # two models that both predict the text, differently
        loss_a = embedded_model(tokens, return_type="loss").item()
        loss_b = second_model(tokens, return_type="loss").item()
    assert loss_a < 4.0 and loss_b < 4.0 and loss_a != loss_b


def test_models_load_by_name(second_model):
    by_name = load_model_by_name("toy-1l-b")
    assert by_name.cfg.model_name == "toy-1l-b"
    for key, value in second_model.state_dict().items():
        assert torch.equal(by_name.state_dict()[key], value), key
    assert load_model_by_name("toy-1l").cfg.model_name == "toy-1l"


def test_unknown_embedded_name_names_the_shipped_ones(tmp_path):
    for load in (lambda: load_embedded(name="toy-1l-c"), lambda: load_model_by_name("toy-2l")):
        with pytest.raises(ValueError, match=r"unknown embedded model .*\['toy-1l', 'toy-1l-b'\]"):
            load()
    with pytest.raises(ValueError, match="a path or a name, not both"):
        load_embedded(EMBEDDED_DIR, name="toy-1l-b")


@pytest.mark.parametrize("name", EMBEDDED_MODELS)
def test_model_card_matches_the_shipped_config(name):
    """The card quotes config.json's numbers (written together by pretrain.py's export)."""
    from sae_lightning.toy.export import CARD_FILE, model_card

    folder = embedded_dir(name)
    config = json.loads((folder / "config.json").read_text())
    assert config["name"] == name
    card = (folder / CARD_FILE).read_text()
    assert card.startswith(model_card(config))  # toy-1l's adds a Reproduction section
    assert f"**{config['metrics']['heldout_loss']:.4f} nats/token**" in card


def test_both_models_are_scored_on_the_same_heldout_tokens():
    """Same corpus, split and tokenizer: the two held-out losses are comparable."""
    configs = [json.loads((embedded_dir(n) / "config.json").read_text()) for n in EMBEDDED_MODELS]
    first, second = (c["recipe"] for c in configs)
    same = ("corpus", "val_fraction", "vocab_size", "max_steps", "batch_size", "optimizer")
    assert {k: first[k] for k in same} == {k: second[k] for k in same}
    assert (first["seed"], second["seed"]) == (0, 1)
    assert second["tokenizer"] == "sae_lightning/assets/toy-1l/tokenizer"
    tokens = [c["metrics"]["heldout_tokens"] for c in configs]
    assert tokens[0] == tokens[1] > 100_000


@pytest.mark.slow  # scores about 100k held-out tokens per model
@pytest.mark.parametrize("name", EMBEDDED_MODELS)
def test_evaluate_reproduces_the_heldout_loss_of_the_card(name, capsys):
    from sae_lightning.toy.evaluate import main

    config = json.loads((embedded_dir(name) / "config.json").read_text())
    main([name])
    out = capsys.readouterr().out
    metrics = config["metrics"]
    want = f"{metrics['heldout_loss']:.4f} nats/token over {metrics['heldout_tokens']} tokens"
    assert f"held-out loss of {name}: {want}" in out, out


def test_a_stdlib_model_warns_once_under_another_python(caplog):
    from sae_lightning.models import check_corpus_python

    config = {"name": "toy-x", "recipe": {"corpus": "stdlib"}, "metrics": {"python": "3.11.7"}}
    assert not check_corpus_python(config, "3.11.2")  # same minor version: the same corpus
    assert not caplog.records
    assert check_corpus_python(config, "3.12.1") and check_corpus_python(config, "3.12.1")
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "toy-x was trained on Python 3.11.7" in warned[0]
    assert "this is Python 3.12.1" in warned[0]
    other = {**config, "recipe": {"corpus": "/data/texts.jsonl"}}  # not the stdlib corpus
    assert not check_corpus_python(other, "3.12.1")
    shipped = json.loads((embedded_dir("toy-1l") / "config.json").read_text())
    assert shipped["recipe"]["corpus"] == "stdlib" and shipped["metrics"]["python"]
