"""Cross-model universality: an SAE of model A matched against an SAE of model B on the same
tokens, neurons of A against neurons of B (the paper's baseline), tokenizers compared.

Model B is model A with its MLP neurons permuted (and, in the hand-built models, scaled by
positive constants): every neuron of A then has a neuron of B with correlation 1, and an SAE
whose features are SAE A's, permuted and rewritten in B's neuron basis, matches every live
feature with correlation 1. An unrelated model B is the control that these checks can fail.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_analysis_core import META, ROOT, random_sae, tiny_corpus  # noqa: F401
from test_plugins import HOOK, FakeModel, make_ctx
from torch import Tensor

from plugins.universality import Universality
from sae_lightning.analysis.comparison import check_same_tokenizer, neuron_hook, same_model
from sae_lightning.analysis.module import AnalysisModule
from sae_lightning.saes import ReLUSAE

VOCAB, D_MLP, N_CTX, D_SAE = 12, 8, 20, 6
PERM = torch.tensor([3, 0, 7, 5, 1, 6, 2, 4])  # B's neuron j is A's neuron PERM[j]
SCALE = torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25, 1.5, 4.0, 0.8])  # positive
FPERM = torch.tensor([2, 5, 0, 4, 1, 3])  # SAE B's feature k is SAE A's feature FPERM[k]


class Model(FakeModel):
    """A hand-built model with an MLP width (``cfg.d_mlp``)."""

    def __init__(self, embed: Tensor, pos_embed: Tensor) -> None:
        super().__init__(embed, pos_embed)
        self.cfg = SimpleNamespace(normalization_type="LN", d_mlp=embed.shape[1])


def permuted_model(model: Model, perm: Tensor, scale: Tensor) -> Model:
    """Neuron ``j`` of the result is ``scale[j] *`` neuron ``perm[j]`` of ``model``; ``W_out``
    undoes it, so the residual stream and the logits are unchanged."""
    other = Model(model.embed[:, perm] * scale, model.pos_embed[:, perm] * scale)
    other.weights = dict(model.weights)
    other.weights["blocks.0.mlp.out.weight"] = (
        model.weights["blocks.0.mlp.out.weight"][:, perm] / scale
    )
    return other


def permuted_sae(sae: ReLUSAE, perm: Tensor, scale: Tensor, fperm: Tensor) -> ReLUSAE:
    """SAE A's features in the order ``fperm``, reading model A's neurons permuted by ``perm``
    and scaled by ``scale`` (model B's): feature ``k`` on B equals feature ``fperm[k]`` on A."""
    other = ReLUSAE(sae.d_in, sae.d_sae, apply_b_dec_to_input=True)
    with torch.no_grad():
        other.W_enc.copy_(sae.W_enc[perm][:, fperm] / scale[:, None])
        other.b_enc.copy_(sae.b_enc[fperm])
        other.b_dec.copy_(sae.b_dec[perm] * scale)
        other.W_dec.copy_(sae.W_dec[fperm][:, perm] * scale)
    return other.eval()


def random_model(seed: int) -> Model:
    gen = torch.Generator().manual_seed(seed)
    return Model(torch.randn(VOCAB, D_MLP, generator=gen), torch.randn(N_CTX, D_MLP, generator=gen))


def random_sae_a() -> ReLUSAE:
    torch.manual_seed(3)
    sae = ReLUSAE(D_MLP, D_SAE, apply_b_dec_to_input=True)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
        sae.b_enc.normal_(0, 0.3)
        sae.b_enc[4] = -1e6  # feature 4 never fires: dead, left out of the population
    return sae.eval()


@torch.no_grad()
def stream(
    criterion: Universality,
    model_a: Model,
    model_b: Model,
    other_sae: ReLUSAE,
    features: list[int] | None = None,
):
    """The analysis pass (AnalysisModule.validation_step) over 10 contexts, 4 at a time, of
    ``features`` (None: all)."""
    features = list(range(D_SAE)) if features is None else features
    gen = torch.Generator().manual_seed(0)
    contexts = torch.randint(0, VOCAB, (10, N_CTX), generator=gen)
    contexts[:, 0] = torch.arange(10)  # distinct prefixes: no two tokens share an activation
    sae = random_sae_a()
    ctx = make_ctx(model_a, sae, contexts, features, other_sae=other_sae)
    ctx.other_model, ctx.other_hook_name = model_b, HOOK
    module = AnalysisModule(sae, model_a, ctx, results=None, other_sae=other_sae, batch_size=4)
    criterion.setup_metrics(len(features), ctx)
    batches = []
    for start in range(0, len(contexts), 4):
        rows = torch.arange(start, min(start + 4, len(contexts)))
        batches.append(module.validation_step((contexts[rows], rows), 0))
        criterion.update(batches[-1], ctx)
    results = criterion.results(ctx)
    return results, criterion.summary(results), batches


@pytest.fixture(scope="module")
def permuted_run():
    model_a = random_model(0)
    model_b = permuted_model(model_a, PERM, SCALE)
    return stream(
        Universality(), model_a, model_b, permuted_sae(random_sae_a(), PERM, SCALE, FPERM)
    )


def test_the_pass_streams_model_b_on_the_same_tokens(permuted_run):
    _, _, batches = permuted_run
    for batch in batches:
        assert batch.mlp_neurons.shape == batch.other_mlp_neurons.shape == (*batch.tokens.shape, 8)
        torch.testing.assert_close(batch.other_mlp_neurons, batch.mlp_neurons[..., PERM] * SCALE)
        # SAE B on model B's activations: SAE A's features, permuted
        torch.testing.assert_close(
            batch.other_acts, batch.feature_acts[..., FPERM], atol=1e-5, rtol=1e-5
        )


def test_every_neuron_matches_its_permuted_copy_with_correlation_one(permuted_run):
    summary = permuted_run[1]
    assert summary["median_neuron_best_match_corr"] == pytest.approx(1.0, abs=1e-9)
    assert summary["n_neurons"] == D_MLP


def test_one_analysed_feature_is_matched_like_in_the_full_pass(permuted_run):
    """A single analysed feature (the replication's concept pass): its density is a
    one-element metric, which torchmetrics returns as a 0-d tensor."""
    model_a = random_model(0)
    model_b = permuted_model(model_a, PERM, SCALE)
    other = permuted_sae(random_sae_a(), PERM, SCALE, FPERM)
    results, _, _ = stream(Universality(), model_a, model_b, other, features=[2])
    full = permuted_run[0]
    assert list(results) == [2]
    assert results[2].density == pytest.approx(full[2].density) and results[2].density > 0
    assert results[2].best_match == full[2].best_match


def test_the_neuron_match_recovers_the_permutation():
    model_a = random_model(0)
    criterion = Universality()
    stream(criterion, model_a, permuted_model(model_a, PERM, SCALE), ReLUSAE(D_MLP, 5))
    corr, match = criterion.neuron_matches
    assert match.tolist() == PERM.argsort().tolist()  # A's neuron i is B's neuron inv[i]
    assert corr.tolist() == pytest.approx([1.0] * D_MLP, abs=1e-9)


def test_a_permuted_sae_on_the_permuted_model_matches_every_live_feature(permuted_run):
    results, summary, batches = permuted_run
    acts = torch.cat([b.feature_acts.flatten(0, 1) for b in batches])  # [tokens, F]
    density = (acts > 0).double().mean(0)
    live = [f for f in range(D_SAE) if density[f] >= 1e-5]
    assert 4 not in live and len(live) >= 3  # the dead feature, and enough live ones
    inverse = FPERM.argsort()
    for f in range(D_SAE):
        assert results[f].density == pytest.approx(float(density[f]))
    for f in live:
        assert results[f].best_match == int(inverse[f])
        assert results[f].activation_corr == pytest.approx(1.0, abs=1e-6)
        # through each model's own W_out and W_U: the same logit weights
        assert results[f].logit_weight_corr == pytest.approx(1.0, abs=1e-6)
        assert results[f].verdict is True
    assert results[4].verdict is None and results[4].activation_corr == 0.0
    assert summary["n_live_features"] == len(live) and summary["min_density"] == 1e-5
    assert summary["median_best_match_corr"] == pytest.approx(1.0, abs=1e-6)  # dead one left out
    expected = statistics.median(results[f].neuron_corr for f in live)
    assert summary["median_neuron_baseline_corr"] == pytest.approx(expected)


def test_an_unrelated_model_b_has_no_perfect_matches():
    """The control: the same checks fail for a model B that is not a copy of A."""
    model_b = random_model(7)
    results, summary, _ = stream(Universality(), random_model(0), model_b, random_sae_a())
    assert summary["median_neuron_best_match_corr"] < 0.99
    assert summary["median_best_match_corr"] < 0.99
    assert 0 < summary["n_neurons"] == D_MLP


def test_min_density_leaves_the_rare_features_out_of_the_median(permuted_run):
    results, _, _ = permuted_run
    densities = sorted(r.density for r in results.values())
    cut = densities[3]  # keeps the 3 densest features (ties aside)
    summary = Universality(min_density=cut).summary(results)
    kept = [abs(r.activation_corr) for r in results.values() if r.density >= cut]
    assert summary["n_live_features"] == len(kept) < D_SAE
    assert summary["median_best_match_corr"] == pytest.approx(statistics.median(kept))
    with pytest.raises(ValueError, match="min_density must be in"):
        Universality(min_density=1.5)


def test_neuron_hook_and_model_names():
    assert neuron_hook("blocks.0.mlp.hook_post") == "blocks.0.mlp.hook_post"
    assert neuron_hook("blocks.2.hook_resid_mid") == "blocks.2.mlp.hook_post"
    assert same_model("gelu-1l", "NeelNanda/GELU_1L512W_C4_Code")
    assert not same_model("toy-1l", "toy-1l-b")


def swapped_tokenizer(folder: Path, first: str, second: str) -> Path:
    """The shipped tokenizer with the ids of two tokens exchanged (the same size)."""
    from sae_lightning.models import embedded_dir

    shutil.copytree(embedded_dir() / "tokenizer", folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (folder / "tokenizer.json").write_text(json.dumps(data))
    return folder


def test_models_with_another_tokenizer_of_the_same_size_are_refused(tmp_path):
    from sae_lightning.models import embedded_dir
    from sae_lightning.toy.tokenizer import load_tokenizer

    ours = load_tokenizer(embedded_dir() / "tokenizer")
    theirs = load_tokenizer(swapped_tokenizer(tmp_path / "swapped", "Ġimport", "Ġfor"))
    assert len(theirs.get_vocab()) == len(ours.get_vocab())  # the size alone would pass
    a, b = SimpleNamespace(tokenizer=ours), SimpleNamespace(tokenizer=theirs)
    check_same_tokenizer(a, "toy-1l", SimpleNamespace(tokenizer=ours), "toy-1l-b")  # agrees
    with pytest.raises(ValueError) as err:
        check_same_tokenizer(a, "toy-1l", b, "other-model")
    message = str(err.value)
    for part in ("'toy-1l'", "'other-model'", str(tmp_path / "swapped"), "4096 tokens",
                 "does not share the tokenizer", "'Ġ"):  # fmt: skip
        assert part in message, part
    with pytest.raises(ValueError, match="needs both models' tokenizers.*'no-tokenizer'"):
        check_same_tokenizer(a, "toy-1l", SimpleNamespace(tokenizer=None), "no-tokenizer")


def test_load_comparison_loads_model_b_only_when_another_model_is_named(tmp_path, monkeypatch):
    import sae_lightning.analysis.comparison as comparison
    from sae_lightning.formats import save_saelens
    from sae_lightning.models import embedded_dir
    from sae_lightning.toy.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(embedded_dir() / "tokenizer")
    model_a = SimpleNamespace(tokenizer=tokenizer)
    loaded, checked = {}, []
    monkeypatch.setattr(comparison, "check_compatible", lambda *a: checked.append(a[2:]))
    monkeypatch.setattr(
        comparison, "load_model_by_name", lambda name: loaded.setdefault(name, model_b)
    )
    model_b = SimpleNamespace(tokenizer=tokenizer)
    names = {"a": "gelu-1l", "b": "toy-1l-b"}
    for key, name in names.items():
        hook = "blocks.0.mlp.hook_post" if key == "a" else "blocks.0.hook_mlp_out"
        save_saelens(
            random_sae(8, 4), tmp_path / key, {**META, "model_name": name, "hook_name": hook}
        )
    meta_a = {"model_name": "NeelNanda/GELU_1L512W_C4_Code"}  # an alias of gelu-1l: one model
    same = comparison.load_comparison(str(tmp_path / "a"), meta_a, model_a, HOOK)
    assert same.model is None and same.hook_name is None and loaded == {}
    assert checked == [(model_a, HOOK)]  # read from model A at A's hook, as before
    cross = comparison.load_comparison(str(tmp_path / "b"), meta_a, model_a, HOOK)
    assert cross.model is model_b and list(loaded) == ["toy-1l-b"]
    assert (cross.model_name, cross.hook_name) == ("toy-1l-b", "blocks.0.hook_mlp_out")
    assert checked[-1] == (model_b, "blocks.0.hook_mlp_out")  # B at its own hook
    model_b.tokenizer = load_tokenizer(swapped_tokenizer(tmp_path / "t", "Ġimport", "Ġfor"))
    loaded.clear()
    with pytest.raises(ValueError, match=r"'toy-1l-b'.*does not share the tokenizer.*GELU"):
        comparison.load_comparison(str(tmp_path / "b"), meta_a, model_a, HOOK)


def test_compare_model_without_compare_with_is_refused_before_loading():
    from hydra import compose, initialize_config_dir

    from sae_lightning.analysis.run import _load

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=["sae_path=/no/such/sae", "compare_model={name:x}"])
    message = r"compare_model=\{'name': 'x'\} is the model of the compare_with SAE, but "
    with pytest.raises(ValueError, match=message + r"compare_with=None: pass compare_with=PATH"):
        _load(cfg)


# ---- end to end on the shipped model (about 20 s of CPU each: the model loads) ----


def permuted_toy_folder(folder: Path, perm: Tensor, tokenizer: Path | None = None) -> Path:
    """toy-1l with its MLP neurons permuted (``perm``), as a pretrain.py folder."""
    from sae_lightning.models import embedded_dir

    shutil.copytree(embedded_dir(), folder)
    state = load_file(folder / "model.safetensors")
    for key in ("blocks.0.mlp.in.weight", "blocks.0.mlp.in.bias"):
        state[key] = state[key][perm].contiguous()
    state["blocks.0.mlp.out.weight"] = state["blocks.0.mlp.out.weight"][:, perm].contiguous()
    save_file(state, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "name": "toy-1l-perm"}))
    if tokenizer is not None:
        shutil.rmtree(folder / "tokenizer")
        shutil.copytree(tokenizer, folder / "tokenizer")
    return folder


def cross_analysis(tmp: Path, corpus: Path, model_dir: Path, other_sae: ReLUSAE, *extra: str):
    from hydra import compose, initialize_config_dir

    from sae_lightning.analysis.run import analyze
    from sae_lightning.formats import save_saelens

    save_saelens(random_sae(1024, 32, seed=0), tmp / "a", META)
    save_saelens(other_sae, tmp / "b", {**META, "model_name": "toy-1l-perm"})
    node = f"{{_target_:sae_lightning.models.load_embedded,path:'{model_dir}'}}"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=[
            f"sae_path={tmp / 'a'}", f"compare_with={tmp / 'b'}", f"compare_model={node}",
            "criteria=[universality]", "criteria.universality.min_density=1e-4",
            f"data.source.corpus={corpus}", "data.split=train", "tokens=1024",
            f"paths.output_dir={tmp / 'out'}", "dashboards=false",
            "+trainer.enable_progress_bar=false", *extra,
        ])  # fmt: skip
    analyze(cfg)
    return json.loads((tmp / "out" / "report" / "criteria.json").read_text())


@pytest.mark.slow
def test_analyze_matches_toy_1l_against_its_neuron_permutation(tmp_path, tiny_corpus):  # noqa: F811
    perm = torch.randperm(1024, generator=torch.Generator().manual_seed(0))
    fperm = torch.randperm(32, generator=torch.Generator().manual_seed(1))
    other = permuted_sae(random_sae(1024, 32, seed=0), perm, torch.ones(1024), fperm)
    model_dir = permuted_toy_folder(tmp_path / "m", perm)
    report = cross_analysis(tmp_path, tiny_corpus, model_dir, other, "dashboards=true")
    meta, summary = report["metadata"], report["criteria"]["universality"]
    assert meta["compare_model"] == "toy-1l-perm" and meta["compare_hook_name"] == HOOK
    assert summary["n_neurons"] == 1024
    assert summary["median_neuron_best_match_corr"] == pytest.approx(1.0, abs=1e-6)
    assert summary["median_best_match_corr"] == pytest.approx(1.0, abs=1e-5)
    inverse = fperm.argsort()
    live = {f: r for f, r in report["features"].items() if r["universality"]["density"] >= 1e-4}
    assert summary["n_live_features"] == len(live) > 0
    for f, per_feature in live.items():
        result = per_feature["universality"]
        assert result["best_match"] == int(inverse[int(f)])
        assert result["activation_corr"] == pytest.approx(1.0, abs=1e-5)
        assert result["logit_weight_corr"] == pytest.approx(1.0, abs=1e-5)
    page = (tmp_path / "out" / "report" / "features" / f"{next(iter(live))}.html").read_text()
    assert f"feature <b>{int(inverse[int(next(iter(live)))])}</b>" in page  # the best match shown


@pytest.mark.slow
def test_analyze_refuses_a_model_b_with_another_tokenizer(tmp_path, tiny_corpus):  # noqa: F811
    tokenizer = swapped_tokenizer(tmp_path / "tok", "Ġreturn", "Ġelse")
    model_dir = permuted_toy_folder(tmp_path / "m", torch.arange(1024), tokenizer)
    with pytest.raises(ValueError, match=r"'toy-1l-perm'.*does not share the tokenizer.*'toy-1l'"):
        cross_analysis(tmp_path, tiny_corpus, model_dir, random_sae(1024, 32, seed=1))
    assert not (tmp_path / "out" / "report").exists()


@pytest.mark.slow
@pytest.mark.skipif(
    not (Path(__file__).resolve().parents[1] / "sae_lightning/assets/toy-1l-b").is_dir(),
    reason="the toy-1l-b weights are not shipped yet",
)
def test_an_sae_of_toy_1l_b_is_compared_across_the_two_shipped_models(tmp_path, tiny_corpus):  # noqa: F811
    """SAE B's metadata names toy-1l-b: analyze.py loads it (no compare_model) and matches the
    neurons of two independently trained models: related, never copies of each other."""
    from hydra import compose, initialize_config_dir

    from sae_lightning.analysis.run import analyze
    from sae_lightning.formats import save_saelens

    save_saelens(random_sae(1024, 32, seed=0), tmp_path / "a", META)
    save_saelens(random_sae(1024, 32, seed=1), tmp_path / "b", {**META, "model_name": "toy-1l-b"})
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=[
            f"sae_path={tmp_path / 'a'}", f"compare_with={tmp_path / 'b'}",
            "criteria=[universality]", f"data.source.corpus={tiny_corpus}", "data.split=train",
            "tokens=2048", f"paths.output_dir={tmp_path / 'out'}", "dashboards=false",
            "+trainer.enable_progress_bar=false",
        ])  # fmt: skip
    analyze(cfg)
    report = json.loads((tmp_path / "out" / "report" / "criteria.json").read_text())
    summary = report["criteria"]["universality"]
    assert report["metadata"]["compare_model"] == "toy-1l-b" and summary["n_neurons"] == 1024
    assert 0.1 < summary["median_neuron_best_match_corr"] < 0.99
