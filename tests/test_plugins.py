"""Built-in criteria on hand-built analysis contexts and batches, with known answers."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor

from plugins.not_a_neuron import NotANeuron
from plugins.specificity import Sensitivity, Specificity
from plugins.top_activations import TopActivations
from plugins.universality import Universality
from sae_lightning.analysis.artefacts import AUTO_PROXY, NEURON_MAX_CORR, TOP_EXAMPLES
from sae_lightning.analysis.criterion import AnalysisBatch, AnalysisContext, Criterion
from sae_lightning.analysis.proxies import TokenSetProxy, auto_proxy
from sae_lightning.saes import ReLUSAE

HOOK = "blocks.0.mlp.hook_post"
CRITERIA_DIR = Path(__file__).resolve().parents[1] / "conf" / "criteria"


class FakeModel:
    """Hook activations ``embed[token]`` (+ ``pos_embed[pos]`` + 0.1 * mean of the prefix's
    embeddings, so that equal tokens in different contexts differ); weights for logit weights.
    """

    def __init__(self, embed: Tensor, pos_embed: Tensor | None = None, d_model: int = 5) -> None:
        self.embed, self.pos_embed = embed, pos_embed
        vocab, d_mlp = embed.shape
        gen = torch.Generator().manual_seed(1)
        self.weights = {
            "blocks.0.mlp.out.weight": torch.randn(d_model, d_mlp, generator=gen),
            "ln_final.weight": torch.rand(d_model, generator=gen) + 0.5,
            "unembed.weight": torch.randn(vocab, d_model, generator=gen),
        }

    def acts(self, tokens: Tensor) -> Tensor:
        acts = self.embed[tokens]  # [batch, pos, d_in]
        if self.pos_embed is None:
            return acts
        prefix = acts.cumsum(dim=1) / torch.arange(1, tokens.shape[1] + 1).unsqueeze(-1)
        return acts + self.pos_embed[: tokens.shape[1]] + 0.1 * prefix

    def run_with_hooks(self, tokens: Tensor, fwd_hooks: list) -> None:
        for _, fn in fwd_hooks:
            fn(self.acts(tokens), None)

    def state_dict(self) -> dict[str, Tensor]:
        return self.weights

    # the TransformerBridge properties logit weights read, from the same weights
    cfg = SimpleNamespace(normalization_type="LN")

    @property
    def W_U(self) -> Tensor:  # noqa: N802  (TransformerLens' name)
        return self.weights["unembed.weight"].T  # [d_model, vocab]

    @property
    def blocks(self) -> list[Any]:
        mlp = SimpleNamespace(W_out=self.weights["blocks.0.mlp.out.weight"].T)  # [d_mlp, d_model]
        return [SimpleNamespace(mlp=mlp)]

    @property
    def ln_final(self) -> Any:
        return SimpleNamespace(weight=self.weights["ln_final.weight"])


def identity_sae(vocab: int) -> ReLUSAE:
    """Feature ``t`` is 1 exactly on token ``t`` (with one-hot hook activations)."""
    sae = ReLUSAE(vocab, vocab, apply_b_dec_to_input=False)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(vocab))
        sae.W_dec.copy_(torch.eye(vocab))
    return sae


def make_ctx(model: Any, sae: ReLUSAE, contexts: Tensor, features: list[int], **kw) -> Any:
    vocab = model.embed.shape[0]
    return AnalysisContext(
        sae=sae,
        model=model,
        hook_name=HOOK,
        features=features,
        str_tokens=[f"t{i}" for i in range(vocab)],
        contexts=contexts,
        **kw,
    )


@torch.no_grad()
def batches(ctx: AnalysisContext, size: int) -> list[AnalysisBatch]:
    """The analysis pass, by hand: ``size`` contexts per batch."""
    out = []
    n_ctx = ctx.contexts.shape[1]
    for start in range(0, ctx.contexts.shape[0], size):
        tokens = ctx.contexts[start : start + size]
        neurons = ctx.model.acts(tokens)
        index = torch.arange(start * n_ctx, start * n_ctx + tokens.numel()).view(tokens.shape)
        other = ctx.other_sae.encode(neurons) if ctx.other_sae is not None else None
        feats = ctx.sae.encode(neurons)[..., ctx.features]
        out.append(AnalysisBatch(tokens, index, feats, neurons, other))
    return out


def run(criterion: Criterion, ctx: AnalysisContext, size: int) -> dict[int, dict[str, Any]]:
    criterion.setup_metrics(len(ctx.features), ctx)
    for batch in batches(ctx, size):
        criterion.update(batch, ctx)
    return criterion.results(ctx)


@pytest.fixture
def random_ctx() -> AnalysisContext:
    gen = torch.Generator().manual_seed(0)
    vocab, d_in, n_ctx = 12, 8, 20
    model = FakeModel(
        torch.randn(vocab, d_in, generator=gen), torch.randn(n_ctx, d_in, generator=gen)
    )
    sae = ReLUSAE(d_in, 6, apply_b_dec_to_input=False)
    contexts = torch.randint(0, vocab, (10, n_ctx), generator=gen)
    contexts[:, 0] = torch.arange(10)  # distinct prefixes: no two tokens share an activation
    return make_ctx(model, sae, contexts, [0, 2, 3, 5])


def one_token_ctx(**kw) -> AnalysisContext:
    vocab = 12
    contexts = torch.arange(6 * 16).view(6, 16) * 7 % vocab  # every token occurs
    return make_ctx(FakeModel(torch.eye(vocab)), identity_sae(vocab), contexts, [2, 5], **kw)


def test_not_a_neuron_copy_of_a_neuron():
    gen = torch.Generator().manual_seed(0)
    # SAE features are >= 0 (criteria read the entries > 0): copy a non-negative neuron
    neurons = torch.randn(3, 7, 6, generator=gen).abs()
    feature_acts = torch.stack([neurons[..., 3], torch.randn(3, 7, generator=gen)], dim=-1)
    sae = ReLUSAE(6, 2)
    with torch.no_grad():
        sae.W_dec[0] = torch.eye(6)[3] * 2.0
    ctx = make_ctx(FakeModel(torch.eye(6)), sae, torch.zeros(3, 7, dtype=torch.long), [0, 1])
    index = torch.arange(21).view(3, 7)
    criterion = NotANeuron()
    criterion.setup_metrics(2, ctx)
    criterion.update(AnalysisBatch(index % 4, index, feature_acts, neurons), ctx)
    res = criterion.results(ctx)
    assert res[0].max_neuron_corr == pytest.approx(1.0)
    assert res[0].neuron == 3 and res[0].verdict is False
    assert res[0].decoder_basis_alignment == pytest.approx(1.0)
    assert res[1].decoder_basis_alignment < 0.99
    assert ctx.artefacts.get(NEURON_MAX_CORR)[0] == pytest.approx(1.0)


def test_one_token_feature_is_specific_and_sensitive():
    ctx = one_token_ctx()
    spec = run(Specificity(), ctx, size=2)
    sens = run(Sensitivity(), ctx, size=2)
    for f in (2, 5):
        assert spec[f].specificity == 1.0 and spec[f].verdict is True
        assert spec[f].proxy_tokens == [f"t{f}"] and spec[f].specificity_source == "exact"
        assert sens[f].sensitivity == 1.0 and sens[f].verdict is True
        assert sens[f].n_proxy_tokens == int((ctx.contexts == f).sum())


def test_configured_proxy_applies_to_every_feature():
    ctx = one_token_ctx()
    proxy = TokenSetProxy(["t2", "t3"])
    spec = run(Specificity(proxy=proxy), ctx, size=4)
    sens = run(Sensitivity(proxy=proxy), ctx, size=4)
    n2, n3 = (int((ctx.contexts == t).sum()) for t in (2, 3))
    assert spec[2].specificity == 1.0 and spec[5].specificity == 0.0
    assert sens[2].sensitivity == pytest.approx(n2 / (n2 + n3))
    assert sens[5].sensitivity == 0.0 and sens[5].verdict is False
    assert spec[2].proxy == "tokens {'t2', 't3'}"


def test_specificity_histogram_and_llr_by_hand():
    # Feature 0 is 1.0 on token 0, 0.5 on token 1, 0.2 on token 2, 0 on token 3.
    sae = ReLUSAE(4, 1, apply_b_dec_to_input=False)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0], [0.5], [0.2], [0.0]]))
    contexts = torch.tensor([[0, 1, 2, 3, 0, 1], [2, 2, 0, 3, 1, 1]])
    ctx = make_ctx(FakeModel(torch.eye(4)), sae, contexts, [0])
    proxy = TokenSetProxy(["t0", "t2"])
    res = run(Specificity(proxy=proxy, n_bins=2, max_scale=1.0), ctx, size=1)[0]
    n0, n1, n2 = 3, 4, 3  # occurrences of tokens 0, 1, 2
    hist = res.histogram
    assert hist.edges == pytest.approx([0.0, 0.5, 1.0])
    assert hist.proxy_counts == [n2, n0] and hist.other_counts == [0, n1]
    eps = 1e-9
    p_pos, p_neg = [n2 / (n0 + n2), n0 / (n0 + n2)], [0.0, 1.0]
    expected = [math.log((p + eps) / (q + eps)) for p, q in zip(p_pos, p_neg, strict=True)]
    assert hist.llr == pytest.approx(expected)
    # Exact: only token 0 is strictly above half the max (0.5); the histogram's bin [0.5, 1]
    # also holds token 1, which is why the exact counters give the number.
    assert res.specificity == 1.0 and res.n_above_threshold == n0
    assert res.specificity_histogram == pytest.approx(n0 / (n0 + n1))


@pytest.mark.parametrize(
    "make", [TopActivations, Specificity, Sensitivity, NotANeuron, Universality]
)
def test_streaming_equals_one_shot(random_ctx, make):
    random_ctx.other_sae = ReLUSAE(8, 5, apply_b_dec_to_input=False)
    one = run(make(), random_ctx, size=10)
    random_ctx.artefacts.clear()
    many = run(make(), random_ctx, size=3)
    for f in random_ctx.features:
        assert type(many[f]) is type(one[f])
        one_f, many_f = one[f].to_dict(), many[f].to_dict()
        one_f.pop("quantile_samples", None), many_f.pop("quantile_samples", None)
        assert many_f.keys() == one_f.keys()
        for key, value in one_f.items():
            if isinstance(value, float):
                # correlations: float32 (centred) cross products, ~1e-7 apart by batching
                tol = 1e-6 if "corr" in key else 1e-9
                assert many_f[key] == pytest.approx(value, abs=tol), key
            else:
                assert many_f[key] == value, key


def true_acts(ctx: AnalysisContext) -> Tensor:
    with torch.no_grad():
        return ctx.sae.encode(ctx.model.acts(ctx.contexts))[..., ctx.features].flatten(0, 1)


def test_top_activations_match_a_full_sort(random_ctx):
    res = run(TopActivations(k=5, window=3), random_ctx, size=3)
    acts = true_acts(random_ctx)  # [tokens, F]
    flat_tokens = random_ctx.contexts.flatten()
    for row, f in enumerate(random_ctx.features):
        values, order = acts[:, row].sort(descending=True)
        firing = int((values > 0).sum())
        top = res[f].top_examples
        assert [e.token_index for e in top] == order[: min(5, firing)].tolist()
        assert [e.activation for e in top] == pytest.approx(values[: len(top)].tolist())
        for e in top:
            c, p = divmod(e.token_index, 20)
            assert e.tokens == [f"t{t}" for t in random_ctx.contexts[c, max(0, p - 3) : p + 4]]
            assert e.tokens[e.highlight] == f"t{flat_tokens[e.token_index]}"
        assert res[f].density == pytest.approx(float((acts[:, row] > 0).double().mean()))
        mass = torch.zeros(12, dtype=torch.float64).index_add_(
            0, flat_tokens, acts[:, row].double()
        )
        assert random_ctx.artefacts.get(AUTO_PROXY)[f] == auto_proxy(mass)
        assert random_ctx.artefacts.get(TOP_EXAMPLES)[f] == [
            (e.token_index, e.activation) for e in top
        ]


def test_quantile_samples_are_exact_and_in_their_interval(random_ctx):
    res = run(TopActivations(n_intervals=3, per_interval=2), random_ctx, size=4)
    acts = true_acts(random_ctx)
    seen = 0
    for row, f in enumerate(random_ctx.features):
        for interval in res[f].quantile_samples:
            lo, hi = interval.interval
            assert len(interval.examples) <= 2
            for e in interval.examples:
                assert e.activation == acts[e.token_index, row].item()  # exact
                assert lo <= e.activation and (hi is None or e.activation < hi)
                seen += 1
    assert seen > 0


def test_dead_feature_gets_no_verdict(random_ctx):
    with torch.no_grad():
        random_ctx.sae.b_enc[0] = -1e6  # feature 0 never fires
    random_ctx.other_sae = ReLUSAE(8, 5, apply_b_dec_to_input=False)
    for make, key in ((NotANeuron, "max_neuron_corr"), (Universality, "activation_corr")):
        random_ctx.artefacts.clear()
        res = run(make(), random_ctx, size=5)
        assert res[0].verdict is None and getattr(res[0], key) == 0.0
    res = run(Specificity(), random_ctx, size=5)[0]
    assert res.proxy == "none" and res.specificity is None and res.verdict is None
    assert run(Sensitivity(), random_ctx, size=5)[0].verdict is None


@pytest.mark.parametrize("path", sorted(CRITERIA_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_criteria_configs_instantiate(path):
    text = path.read_text()
    assert text.startswith(f"# @package criteria.{path.stem}\n")
    criterion = instantiate(OmegaConf.load(path))
    assert isinstance(criterion, Criterion) and criterion.name == path.stem
    with pytest.raises(InstantiationException, match="no_such_option"):  # no catch-alls
        instantiate(OmegaConf.merge(OmegaConf.load(path), {"no_such_option": 1}))


def test_specificity_config_takes_a_proxy_node():
    cfg = OmegaConf.load(CRITERIA_DIR / "specificity.yaml")
    cfg.proxy = {"_target_": "sae_lightning.analysis.proxies.RegexProxy", "pattern": "^t1"}
    criterion = instantiate(cfg)
    ctx = one_token_ctx()
    res = run(criterion, ctx, size=6)
    assert res[2].proxy == "regex '^t1'" and res[2].specificity == 0.0
    assert res[5].proxy_tokens == ["t1", "t10", "t11"]


def test_lightning_hooks_drive_a_criterion(random_ctx):
    criterion = TopActivations(n_intervals=2)
    module = SimpleNamespace(ctx=random_ctx, device=torch.device("cpu"))
    criterion.setup(None, module, "validate")  # type: ignore[arg-type]
    assert len(criterion.metrics()) == 3 + 2  # top-k, density, firing counts, 2 intervals
    for i, batch in enumerate(batches(random_ctx, 4)):
        criterion.on_validation_batch_end(None, module, batch, None, i)  # type: ignore[arg-type]
    expected = run(TopActivations(n_intervals=2), random_ctx, size=10)
    assert criterion.results(random_ctx)[0].top_examples == expected[0].top_examples
