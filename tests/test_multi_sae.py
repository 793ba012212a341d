"""Several SAEs on one activation stream (saes=, experiment=multi_sae): each ends with its
solo run's weights; per-SAE exports, metrics.json, TensorBoard runs, summary and frontier."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf, open_dict
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import ROOT, small_corpus, small_run  # noqa: F401

from sae_lightning.multi_config import SAELoggers, sae_configs
from sae_lightning.training import train

FP32 = "trainer.precision=32-true"  # equality is exact in fp32 (bf16 may be another default)


@contextmanager
def hydra_app(out: Path, corpus: Path, *overrides: str):
    """The config ``python train.py <overrides>`` composes, with HydraConfig set as inside
    train.py (saes= composes each SAE from the run's overrides)."""
    args = [*small_run(corpus), f"paths.output_dir={out}", FP32, *overrides]
    args.insert(2, "callbacks.tokens_per_second.window=5")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=args, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg.hydra
        try:
            yield cfg
        finally:
            HydraConfig.instance().cfg = None


def run(out: Path, corpus: Path, *overrides: str) -> dict[str, float]:
    with hydra_app(out, corpus, *overrides) as cfg:
        return train(cfg)


def _ckpt_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory, small_corpus):  # noqa: F811
    out = tmp_path_factory.mktemp("multi")
    return out, run(out, small_corpus, "experiment=multi_sae")


@pytest.mark.slow
def test_multi_sae_experiment_writes_each_sae_like_a_sweep_job(multi_run):
    out, metrics = multi_run
    names = ["l1_1", "l1_2", "l1_4", "topk_k32"]
    l0 = {n: metrics[f"{n}/val/l0"] for n in names}
    assert l0["l1_1"] > l0["l1_2"] > l0["l1_4"] > 0  # a larger L1 penalty, fewer active latents
    assert 0 < l0["topk_k32"] <= 32
    for name in names:
        folder = out / "saes" / name
        record = json.loads((folder / "metrics.json").read_text())
        assert record["metrics"]["val/l0"] == metrics[f"{name}/val/l0"]
        assert (
            record["overrides"][-1] == "saes=null" and "experiment=multi_sae" in record["overrides"]
        )
        cfg_json = json.loads((folder / "sae" / "cfg.json").read_text())
        assert cfg_json["d_sae"] == 256
        assert cfg_json["architecture"] == ("topk" if name == "topk_k32" else "standard")
    summary = (out / "saes" / "summary.md").read_text().splitlines()
    assert len(summary) == 2 + 4 and [r.split(" | ")[0].strip("| ") for r in summary[2:]] == names
    assert "loss.l1_coeff=4" in summary[4]  # the overrides that vary between SAEs
    frontier = (out / "saes" / "frontier.md").read_text()
    assert frontier.count("| standard |") == 3 and frontier.count("| topk |") == 1
    assert (out / "saes" / "frontier.html").is_file()


@pytest.mark.slow
def test_each_sae_has_its_own_tensorboard_run(multi_run):
    out, metrics = multi_run
    acc = EventAccumulator(str(out / "saes" / "l1_4" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/l0", "train/loss", "val/loss_recovered", "val/dead_fraction"} <= scalars
    assert not any(t.startswith("l1_") for t in scalars)  # the SAE's own keys, unprefixed
    assert {"train/log10_feature_density"} <= set(acc.Tags()["histograms"])
    recovered = acc.Scalars("val/loss_recovered")[-1].value
    assert recovered == pytest.approx(metrics["l1_4/val/loss_recovered"], rel=1e-6)
    shared = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    shared.Reload()
    assert {"train/tokens_per_sec", "lr-Adam"} <= set(shared.Tags()["scalars"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,overrides", [("l1_2", ["loss.l1_coeff=2"]), ("topk_k32", ["sae=topk", "sae.k=32"])]
)
def test_each_sae_equals_its_solo_run(multi_run, tmp_path, small_corpus, name, overrides):  # noqa: F811
    out, metrics = multi_run
    solo = run(tmp_path, small_corpus, "experiment=multi_sae", *overrides, "saes=null")
    multi_state = _ckpt_state(out / "checkpoints" / "last.ckpt")
    solo_state = _ckpt_state(tmp_path / "checkpoints" / "last.ckpt")
    prefix = f"saes.{name}."
    mine = {k.removeprefix(prefix): v for k, v in multi_state.items() if k.startswith(prefix)}
    assert set(mine) == set(solo_state) and "sae.W_dec" in mine
    for key, value in solo_state.items():
        assert torch.equal(mine[key], value), key
    exported = load_file(out / "saes" / name / "sae" / "sae_weights.safetensors")
    alone = load_file(tmp_path / "sae" / "sae_weights.safetensors")
    assert all(torch.equal(exported[k], alone[k]) for k in alone)
    assert metrics[f"{name}/val/loss_recovered"] == pytest.approx(solo["val/loss_recovered"])


@pytest.mark.slow
def test_resumed_multi_run_ends_with_the_same_weights(multi_run, tmp_path, small_corpus):  # noqa: F811
    out, _ = multi_run
    half = tmp_path / "half"
    run(half, small_corpus, "experiment=multi_sae", "trainer.max_steps=10")
    ckpt = half / "checkpoints" / "last.ckpt"
    run(tmp_path / "resumed", small_corpus, "experiment=multi_sae", f"ckpt_path={ckpt}")
    full = _ckpt_state(out / "checkpoints" / "last.ckpt")
    resumed = _ckpt_state(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert not torch.equal(full["saes.l1_2.sae.W_enc"], _ckpt_state(ckpt)["saes.l1_2.sae.W_enc"])
    assert set(full) == set(resumed)
    for key, value in full.items():
        assert torch.equal(resumed[key], value), key


FRONTIER = ("relu_l1_1", "relu_l1_2", "topk_k16", "topk_k64", "jumprelu_t05", "jumprelu_t10")


def test_frontier_multi_saes_are_the_frontier_sweeps_jobs(tmp_path, small_corpus):  # noqa: F811
    """hparams_search=frontier_multi: each SAE's config is its -m hparams_search=frontier job's."""
    with hydra_app(tmp_path, small_corpus, "hparams_search=frontier_multi") as cfg:
        subs = sae_configs(cfg)
        assert list(subs) == list(FRONTIER)
        for name in ("relu_l1_1", "topk_k16", "jumprelu_t05"):  # one per architecture
            sub, solo = subs[name]
            job = [*small_run(small_corpus), f"paths.output_dir={tmp_path}", FP32]
            job += ["hparams_search=frontier", f"experiment=frontier/{name}"]
            expected = compose("train", overrides=job)
            for key in ("sae", "loss", "module", "trainer", "data", "sparsity_warmup_steps"):
                unresolved = (OmegaConf.to_container(c, resolve=False) for c in (sub, expected))
                mine, theirs = (c[key] for c in unresolved)
                assert mine == theirs, (name, key)
            assert solo[-2:] == [f"experiment=frontier/{name}", "saes=null"]
            assert sub.paths.output_dir == str(tmp_path / "saes" / name)
    assert subs["topk_k16"][0].sae.k == 16  # d_sae: debug=fast (256) wins, as in the sweep job
    assert subs["relu_l1_1"][0].loss.l1_coeff == 1.0


@pytest.mark.parametrize(
    "saes,message",
    [
        ("saes={a:['data.batch_size=512']}", r"saes.a changes data \(.*512.*\).*sweep it with -m"),
        ("saes={a:['seed=3']}", "saes.a changes seed"),
        ("saes={a:'loss.l1_coeff=2'}", r"saes.a must be a list of overrides"),
        ("saes={a%b:[]}", "'a%b' is not a usable SAE name"),
        ("saes=[x]", "saes must map SAE names to override lists"),
    ],
)
def test_bad_saes_are_one_clear_error(tmp_path, small_corpus, saes, message):  # noqa: F811
    with hydra_app(tmp_path, small_corpus, saes) as cfg, pytest.raises(ValueError, match=message):
        sae_configs(cfg)


def test_saes_of_a_crosscoder_of_two_models_are_refused(tmp_path, small_corpus):  # noqa: F811
    saes = "saes={a:['loss.l1_coeff=1'],b:['loss.l1_coeff=2']}"
    with (
        hydra_app(tmp_path, small_corpus, "experiment=crosscoder_models", saes) as cfg,
        pytest.raises(ValueError, match=r"saes=\['a', 'b'\] with model_b set.*-m"),
    ):
        sae_configs(cfg)


def test_saes_outside_a_hydra_app_is_one_clear_error(tmp_path, small_corpus):  # noqa: F811
    with hydra_app(tmp_path, small_corpus, "experiment=multi_sae") as cfg:
        pass  # HydraConfig is cleared on leaving
    with pytest.raises(ValueError, match="composes each SAE from this run's overrides"):
        train(cfg)


class _Recorder(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[dict, int | None]] = []

    name, version = "rec", 0

    @property
    def experiment(self):
        return None

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((metrics, step))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_sae_loggers_route_each_saes_metrics_to_its_own_loggers():
    shared, a, b = _Recorder(), _Recorder(), _Recorder()
    routed = SAELoggers([shared], {"a": [a], "b.2": [b]})
    routed.log_metrics({"a/train/l0": 3.0, "b.2/val/kl": 0.5, "lr-Adam": 1e-3, "c/x": 1.0}, 7)
    assert a.metrics == [({"train/l0": 3.0}, 7)] and b.metrics == [({"val/kl": 0.5}, 7)]
    assert shared.metrics == [({"lr-Adam": 1e-3, "c/x": 1.0}, 7)]  # c is no SAE of the run
    assert routed.member("a") is a and routed.member("c") is None


def test_a_sweep_of_multi_sae_runs_has_one_row_per_sae(tmp_path):
    """-m over runs with saes=: summary and frontier rows <job>/saes/<name>, jobs in order."""
    from sae_lightning.sweep import METRICS_FILE, summarize

    rows = {"10": 30.0, "2/saes/b": 20.0, "2/saes/a": 10.0, "9": 40.0}
    for job, l0 in rows.items():
        (tmp_path / job).mkdir(parents=True)
        record = {"metrics": {"val/l0": l0, "val/loss_recovered": l0 / 50}, "overrides": [job]}
        (tmp_path / job / METRICS_FILE).write_text(json.dumps({**record, "architecture": "x"}))
    summary = summarize(tmp_path)
    assert [r["job"] for r in summary] == ["2/saes/a", "2/saes/b", "9", "10"]
    assert [r["val/l0"] for r in summary] == [10.0, 20.0, 40.0, 30.0]
    assert (tmp_path / "frontier.md").read_text().count("| x |") == 4
