"""The analysis core: SAE loading, compatibility checks, feature selection, the pass, the report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor
from torchmetrics import Metric

from sae_lightning.analysis.criterion import AnalysisBatch, AnalysisContext, Criterion
from sae_lightning.analysis.loading import load_sae
from sae_lightning.analysis.reader import Reader
from sae_lightning.analysis.records import FORMAT_VERSION, TopActivationsResult
from sae_lightning.analysis.results import AnalysisResults
from sae_lightning.analysis.run import analyze, load_contexts
from sae_lightning.analysis.selection import TOP_CONTEXTS, select_features
from sae_lightning.formats import save_saelens
from sae_lightning.hooks import capture_activations
from sae_lightning.saes import ReLUSAE

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.mlp.hook_post"
META = {"model_name": "toy-1l", "hook_name": HOOK, "context_size": 32, "prepend_bos": True}
CORPUS_FILES = ("textwrap.py", "shlex.py", "fnmatch.py", "heapq.py")


def random_sae(d_in: int, d_sae: int, seed: int = 0) -> ReLUSAE:
    """A ReLUSAE with unit-norm decoder rows and random (nonzero) biases."""
    torch.manual_seed(seed)
    sae = ReLUSAE(d_in, d_sae)
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.1)
        sae.b_enc.normal_(0, 0.05)
        sae.b_dec.normal_(0, 0.1)
    return sae.eval()


class MeanActivation(Metric):
    """Per feature: sum of activations, firing count, max; token count (bounded states)."""

    full_state_update = False

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(n_features, dtype=torch.float64), "sum")
        self.add_state("fires", torch.zeros(n_features, dtype=torch.long), "sum")
        self.add_state("peak", torch.zeros(n_features), "max")
        self.add_state("n", torch.zeros((), dtype=torch.long), "sum")

    def update(self, acts: Tensor) -> None:  # [n, n_features]
        self.total = self.total + acts.double().sum(0)
        self.fires = self.fires + (acts > 0).sum(0)
        self.peak = torch.maximum(self.peak, acts.amax(0))
        self.n = self.n + acts.shape[0]

    def compute(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.total, self.fires, self.peak, self.n


class MyCriterion(Criterion):
    """The test's own criterion, selected by config alone (tests/…/criteria/mine.yaml)."""

    name: ClassVar[str] = "mine"
    headline: ClassVar[str] = "mean_act"
    instances: ClassVar[list[MyCriterion]] = []

    def __init__(self, min_fires: int = 1) -> None:
        super().__init__()
        self.min_fires = min_fires
        self.stats = MeanActivation(1)
        MyCriterion.instances.append(self)

    def setup_metrics(self, n_features: int, ctx: AnalysisContext) -> None:
        self.stats = MeanActivation(n_features)

    def update(self, batch: AnalysisBatch, ctx: AnalysisContext) -> None:
        assert batch.token_index.shape == batch.tokens.shape
        self.stats.update(batch.feature_acts.flatten(0, 1))

    def results(self, ctx: AnalysisContext) -> dict[int, dict[str, Any]]:
        total, fires, peak, n = self.stats.compute()
        return {
            f: {
                "mean_act": float(total[i] / n),
                "fires": int(fires[i]),
                "max": float(peak[i]),
                "verdict": bool(fires[i] >= self.min_fires),
            }
            for i, f in enumerate(ctx.features)
        }


# ---------------------------------------------------------------- feature selection


@pytest.fixture(scope="module")
def few_contexts(embedded_model) -> Tensor:
    gen = torch.Generator().manual_seed(0)
    contexts = torch.randint(1, embedded_model.cfg.d_vocab, (TOP_CONTEXTS + 8, 16), generator=gen)
    contexts[:, 0] = embedded_model.tokenizer.bos_token_id
    return contexts


def test_explicit_features_are_checked(embedded_model, few_contexts):
    sae, reader = random_sae(1024, 64), Reader(embedded_model, HOOK)
    assert select_features([5, 2, 5], sae, reader, few_contexts) == [5, 2]
    assert select_features("all", sae, reader, few_contexts) == list(range(64))
    with pytest.raises(ValueError, match="feature index 64 is out of range.*d_sae=64"):
        select_features([3, 64], sae, reader, few_contexts)
    with pytest.raises(ValueError, match="not understood.*top:N"):
        select_features("best:3", sae, reader, few_contexts)


def test_top_n_are_the_most_frequently_firing(embedded_model, few_contexts):
    sae = random_sae(1024, 64)
    top = select_features("top:5", sae, Reader(embedded_model, HOOK), few_contexts)
    assert len(top) == len(set(top)) == 5
    with torch.inference_mode():
        acts = capture_activations(embedded_model, few_contexts[:TOP_CONTEXTS], HOOK)
        counts = (sae.encode(acts)[:, 1:] > 0).sum(dim=(0, 1))
    rest = [i for i in range(64) if i not in top]
    assert counts[top].min() >= counts[rest].max()


def test_prompt_features_fire_on_the_prompt(embedded_model, few_contexts):
    sae = random_sae(1024, 64)
    spec = {"prompts": ["def main(argv):", "import os"]}
    chosen = select_features(spec, sae, Reader(embedded_model, HOOK), few_contexts)
    assert chosen == sorted(chosen) and 0 < len(chosen) <= 40
    tok = embedded_model.tokenizer
    ids = [tok.bos_token_id, *tok("import os", add_special_tokens=False)["input_ids"]]
    with torch.inference_mode():
        peak = sae.encode(capture_activations(embedded_model, torch.tensor([ids]), HOOK))[0, 1:]
    assert set(torch.topk(peak.amax(0), 20).indices.tolist()) <= set(chosen)


# ---------------------------------------------------------------- report


def test_report_json_is_strict_and_scorecard_shows_headlines(tmp_path):
    report = AnalysisResults([4, 9], {"model_name": "toy-1l"})
    results = {4: {"density": 0.25, "corr": torch.tensor(0.5), "verdict": True}}
    results[9] = {"density": 0.0, "corr": float("nan"), "verdict": False}
    report.add("c", results, {"pass_rate": 0.5})
    data = json.loads(report.to_json(tmp_path / "r" / "criteria.json").read_text())
    assert data["features"]["9"]["c"] == {"density": 0.0, "corr": None, "verdict": False}
    assert data["features"]["4"]["c"]["corr"] == 0.5 and data["criteria"]["c"]["pass_rate"] == 0.5
    assert data["version"] == FORMAT_VERSION and data["headlines"] == {"c": "density"}
    lines = report.scorecard().splitlines()
    assert lines[0].split() == ["feature", "c:density"]  # no density column: no top_activations
    assert lines[2].split() == ["4", "0.25", "✓"]
    # a typed record: the density column is top_activations' density, its headline as declared
    tops = {f: TopActivationsResult(density=d, max_activation=m) for f, d, m in [(4, 0.5, 2.0)]}
    tops[9] = TopActivationsResult(density=0.0, max_activation=0.0)
    report.add("top_activations", tops, {}, TopActivationsResult.headline)
    lines = report.scorecard().splitlines()
    assert lines[0].split() == ["feature", "density", "c:density", "top_activations:max_activation"]
    assert lines[2].split() == ["4", "5.00e-01", "0.25", "✓", "2", "·"]
    data = json.loads(report.to_json(tmp_path / "r" / "criteria.json").read_text())
    assert data["headlines"]["top_activations"] == "max_activation"
    assert data["features"]["4"]["top_activations"] == tops[4].to_dict()
    with pytest.raises(ValueError, match=r"features \[7\] that are not analysed"):
        report.add("d", {7: {"verdict": True}}, {})
    # nested non-finite values and tensors are cleaned too (the writer's slow path)
    report.add("n", {4: {"h": [1.0, float("inf")], "t": {"x": torch.ones(2)}, "verdict": None}}, {})
    data = json.loads(report.to_json(tmp_path / "r" / "criteria.json").read_text())
    assert data["features"]["4"]["n"] == {"h": [1.0, None], "t": {"x": [1.0, 1.0]}, "verdict": None}


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    import sysconfig

    folder = tmp_path_factory.mktemp("corpus")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for i, name in enumerate(CORPUS_FILES):
        (folder / f"{i:02d}_{name}").write_text((stdlib / name).read_text())
    return folder


@pytest.fixture(scope="module")
def criteria_dir(tmp_path_factory) -> Path:
    """A search-path folder holding criteria/mine.yaml, as an outside package would."""
    folder = tmp_path_factory.mktemp("conf")
    (folder / "criteria").mkdir()
    (folder / "criteria" / "mine.yaml").write_text(
        "# @package criteria.mine\n_target_: test_analysis_core.MyCriterion\nmin_fires: 3\n"
    )
    return folder


def analysis_cfg(out: Path, sae: Path, corpus: Path, criteria_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "analyze",
            overrides=[
                f"sae_path={sae}",
                f"paths.output_dir={out}",
                f"hydra.searchpath=[file://{criteria_dir}]",
                "criteria=[mine]",
                f"data.source.corpus={corpus}",
                "data.split=train",
                "tokens=4096",
                "batch_size=16",
                "+trainer.enable_progress_bar=false",
                *overrides,
            ],
        )


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, tiny_corpus, criteria_dir):
    tmp = tmp_path_factory.mktemp("analysis")
    save_saelens(random_sae(1024, 64), tmp / "sae", META)
    cfg = analysis_cfg(tmp / "out", tmp / "sae", tiny_corpus, criteria_dir, "features=[3,10,20,63]")
    MyCriterion.instances.clear()
    report = analyze(cfg)
    return cfg, report, tmp


def test_custom_criterion_numbers_match_a_direct_computation(analysed, embedded_model):
    cfg, report, tmp = analysed
    data = json.loads((tmp / "out" / "report" / "criteria.json").read_text())
    assert list(data["features"]) == ["3", "10", "20", "63"]
    assert data["metadata"]["n_tokens"] == 4096 and data["metadata"]["criteria"] == ["mine"]
    sae, _ = load_sae(tmp / "sae")
    contexts = load_contexts(cfg, embedded_model, 32)
    assert contexts.shape == (128, 32)
    with torch.inference_mode():
        acts = capture_activations(embedded_model, contexts, HOOK)
        # the pass leaves out BOS (position 0), as training does: 128 * 31 positions
        feats = sae.encode(acts)[:, 1:, [3, 10, 20, 63]].flatten(0, 1)  # [3968, 4]
    for i, f in enumerate([3, 10, 20, 63]):
        got = data["features"][str(f)]["mine"]
        assert got["fires"] == int((feats[:, i] > 0).sum())
        assert got["mean_act"] == pytest.approx(float(feats[:, i].double().mean()), rel=1e-5)
        # the pass encodes in its own batch shapes, so BLAS sums in another order: a
        # float32 product over d_in terms may differ in its last bits (CI saw 1.2e-6)
        assert got["max"] == pytest.approx(float(feats[:, i].max()), rel=1e-5)
        assert got["verdict"] == (got["fires"] >= 3)
    assert data["criteria"]["mine"]["pass_rate"] == report.summaries["mine"]["pass_rate"]
    assert "mine:mean_act" in report.scorecard().splitlines()[0]


def test_criterion_memory_does_not_grow_with_tokens(analysed):
    (criterion,) = MyCriterion.instances
    sizes = {k: tuple(v.shape) for k, v in criterion.stats.metric_state.items()}
    assert sizes == {"total": (4,), "fires": (4,), "peak": (4,), "n": ()}
    # it saw every analysed token (BOS dropped: 128 * 31), kept four numbers per feature
    assert int(criterion.stats.n) == 3968


def test_tensorboard_has_criteria_scalars_histogram_and_scorecard(analysed):
    _, _, tmp = analysed
    acc = EventAccumulator(str(tmp / "out" / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    assert "criteria/mine/pass_rate" in acc.Tags()["scalars"]
    assert "criteria/mine/mean_act" in acc.Tags()["histograms"]
    text = acc.Tensors("criteria/scorecard/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "mine:mean_act" in text


def test_too_few_tokens_warn_and_use_all(tmp_path, tiny_corpus, criteria_dir, caplog):
    save_saelens(random_sae(1024, 8), tmp_path / "sae", META)
    cfg = analysis_cfg(
        tmp_path / "out", tmp_path / "sae", tiny_corpus, criteria_dir, "tokens=100000000"
    )
    from sae_lightning.models import load_embedded

    with caplog.at_level("WARNING"):
        contexts = load_contexts(cfg, load_embedded(), 32)
    assert "using all" in caplog.text and len(contexts) < math.ceil(1e8 / 32)
