"""The activation cache: python cache_activations.py writes it, data=cached trains from it with
the live stream's batches, resume and DDP sharding; refusals name the bad value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from safetensors.torch import load_file
from test_train import ROOT, _ckpt_sae, make_cfg, small_corpus, small_run  # noqa: F401

from sae_lightning.data.cache import CACHE_FILE, cache_activations
from sae_lightning.data.cached import CachedDataModule
from sae_lightning.training import train

FAST_DATA = dict(batch_size=256, buffer_tokens=2048, contexts_per_forward=8)  # as debug=fast


def cache_cfg(corpus: Path, path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "cache_activations",
            overrides=[*small_run(corpus), f"path={path}", "contexts_per_shard=100", *overrides],
        )


@pytest.fixture(scope="module")
def cache(tmp_path_factory, small_corpus) -> Path:  # noqa: F811
    return cache_activations(cache_cfg(small_corpus, tmp_path_factory.mktemp("c") / "cache"))


@pytest.fixture(scope="module")
def live_data(cache, small_corpus):  # noqa: F811
    cfg = cache_cfg(small_corpus, cache)
    data = instantiate(cfg.data)
    data.set_model(instantiate(cfg.model))
    data.prepare_contexts()
    return data


def cached_cfg(out: Path, cache: Path, *overrides: str):
    """``make_cfg``'s tiny run, on the cache."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "debug=fast",
                "data=cached",
                f"data.path={cache}",
                f"paths.output_dir={out}",
                "callbacks.tokens_per_second.window=5",
                *overrides,
            ],
        )


def _train_cached(out: Path, cache: Path, *overrides: str) -> Path:
    train(cached_cfg(out, cache, *overrides))
    return out / "checkpoints" / "last.ckpt"


def test_cache_files_trace_every_activation_to_its_token(cache, live_data):
    info = json.loads((cache / CACHE_FILE).read_text())
    config, n = info["config"], len(live_data.train_ctx)
    assert info["format_version"] == 1 and info["complete"]
    assert (config["model_name"], config["hook_name"], config["d_in"]) == (
        "toy-1l",
        "blocks.0.mlp.hook_post",
        1024,
    )
    assert (config["n_ctx"], config["drop_bos"], config["dtype"]) == (128, True, "float32")
    assert info["n_contexts"] == n and info["positions"] == 127
    assert info["n_activations"] == n * 127 == sum(s["activations"] for s in info["shards"])
    assert [s["contexts"] for s in info["shards"]] == [100] * (n // 100) + [n % 100]
    shard = load_file(cache / "shard_00001.safetensors")
    ctx, pos = shard["context"], shard["position"]
    assert shard["acts"].shape == (100 * 127, 1024) and int(ctx[0]) == 100 and int(pos[0]) == 1
    assert torch.equal(shard["tokens"], live_data.train_ctx[ctx, pos])  # traceable to its token
    fresh = live_data.spec.trained(live_data.spec.capture(live_data.train_ctx[100:102]))
    torch.testing.assert_close(shard["acts"][: 2 * 127], fresh, rtol=0, atol=1e-6)
    val = load_file(cache / "val.safetensors")
    assert torch.equal(val["tokens"], live_data.val_ctx) and val["acts"].shape == (8 * 127, 1024)


def _rows(data: CachedDataModule, contexts: torch.Tensor) -> torch.Tensor:
    return data.cache[contexts].reshape(-1, 1024)  # [contexts * positions, d_in]


def _same_multiset(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Rows of ``a`` and ``b`` are the same multiset (sorted lexicographically by a key)."""
    key = torch.randn(1024, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return a.shape == b.shape and torch.equal(
        a[(a.double() @ key).argsort()], b[(b.double() @ key).argsort()]
    )


def test_cached_stream_yields_the_live_batches_each_activation_once(cache, live_data):
    cached = CachedDataModule(str(cache), **FAST_DATA)
    epoch = list(cached.make_stream(epochs=1))
    live = live_data.make_stream().__iter__()
    for i in range(30):  # a few refills of the live stream: the same rows, bit for bit, in order
        assert torch.equal(epoch[i], next(live)), i
    assert _same_multiset(torch.cat(epoch), _rows(cached, torch.arange(len(cached.cache))))


def test_two_ddp_shards_are_disjoint_and_cover_the_cache(cache):
    data = CachedDataModule(str(cache), **FAST_DATA)
    n = len(data.cache)
    for rank in (0, 1):  # rank r reads contexts r, r + 2, ...: disjoint, and together all
        got = torch.cat(list(data.make_stream(rank, 2, epochs=1)))
        assert _same_multiset(got, _rows(data, torch.arange(rank, n, 2)))


def test_training_from_the_cache_equals_live_and_resumes_exactly(
    tmp_path,
    cache,
    small_corpus,  # noqa: F811
):
    train(make_cfg(tmp_path / "live", small_corpus))
    full = _train_cached(tmp_path / "full", cache)
    live = _ckpt_sae(tmp_path / "live" / "checkpoints" / "last.ckpt")
    for key, value in _ckpt_sae(full).items():
        assert torch.equal(value, live[key]), key
    half = _train_cached(tmp_path / "half", cache, "trainer.max_steps=10")
    resumed = _train_cached(
        tmp_path / "resumed", cache, "trainer.max_steps=20", f"ckpt_path={half}"
    )
    assert not torch.equal(_ckpt_sae(half)["W_enc"], live["W_enc"])
    for key, value in _ckpt_sae(resumed).items():
        assert torch.equal(value, live[key]), key


def test_a_model_free_sweep_never_loads_the_model(tmp_path, cache, small_corpus, monkeypatch):  # noqa: F811
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("sae_lightning.models.load_embedded", refuse)
    for d_sae in (64, 128):
        out = tmp_path / str(d_sae)
        metrics = train(
            cached_cfg(
                out,
                cache,
                "experiment=cached_model_free",
                f"sae.d_sae={d_sae}",
            )
        )
        assert 0 < metrics["val/explained_variance"] <= 1 and "val/loss_recovered" not in metrics
        cfg = json.loads((out / "sae" / "cfg.json").read_text())
        assert (cfg["d_sae"], cfg["metadata"]["model_name"]) == (d_sae, "toy-1l")
        assert cfg["metadata"]["context_size"] == 128


def test_refusals_name_the_bad_value(tmp_path, cache, small_corpus):  # noqa: F811
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=f"{other} is not empty and holds no cache.json"):
        cache_activations(cache_cfg(small_corpus, other))
    with pytest.raises(ValueError, match=r"another config .*'dtype': \('float32', 'bfloat16'\)"):
        cache_activations(cache_cfg(small_corpus, cache, "dtype=bfloat16"))
    with pytest.raises(ValueError, match="d_in=512 does not match the width 1024"):
        train(cached_cfg(tmp_path / "r", cache, "sae.d_in=512"))
    with pytest.raises(
        ValueError, match="hook 'blocks.0.mlp.hook_post', not hook_name='blocks.0.hook_resid_post'"
    ):
        CachedDataModule(str(cache), hook_name="blocks.0.hook_resid_post")
    with pytest.raises(FileNotFoundError, match=f"data.path={other} is not an activation cache"):
        CachedDataModule(str(other))


def _run(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / script), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_readme_commands_resume_an_interrupted_cache_then_train(tmp_path, cache, small_corpus):  # noqa: F811
    """An interrupted cache (last shard missing) is finished by the same command; train on it."""
    folder = tmp_path / "cache"
    folder.mkdir()
    shards = sorted(cache.glob("shard_*.safetensors"))
    for path in [*shards[:-1], cache / "val.safetensors"]:
        os.link(path, folder / path.name)
    info = json.loads((cache / CACHE_FILE).read_text())
    (folder / CACHE_FILE).write_text(json.dumps({**info, "complete": False}))
    with pytest.raises(ValueError, match="incomplete"):
        CachedDataModule(str(folder))
    args = [*small_run(small_corpus), f"path={folder}", "contexts_per_shard=100"]
    result = _run("cache_activations.py", [*args, f"hydra.run.dir={tmp_path}/c"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"next: python train.py data=cached data.path={folder}" in result.stdout + result.stderr
    redone, original = load_file(folder / shards[-1].name), load_file(shards[-1])
    assert all(torch.equal(redone[k], original[k]) for k in original)
    assert json.loads((folder / CACHE_FILE).read_text()) == info
    run = ["data=cached", f"data.path={folder}", "debug=fast", f"hydra.run.dir={tmp_path}/t"]
    result = _run("train.py", run, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())["metrics"]
    assert 0 < metrics["val/loss_recovered"] <= 1.1


@pytest.mark.slow
def test_two_process_ddp_from_the_cache(tmp_path, cache):
    run = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "debug=fast"]
    result = _run(
        "train.py",
        [*run, "data=cached", f"data.path={cache}", f"hydra.run.dir={tmp_path}/t"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())["metrics"]
    assert 0 < metrics["val/loss_recovered"] <= 1.1
    assert (tmp_path / "t" / "sae" / "sae_weights.safetensors").is_file()


@pytest.mark.slow
def test_readme_model_free_sweep_on_the_command_line_never_loads_the_model(tmp_path, cache):
    args = ["-m", "experiment=cached_model_free", f"data.path={cache}", "sae.d_sae=64,128"]
    broken = ["debug=fast", "model._target_=no_such_module.load", f"hydra.sweep.dir={tmp_path}/s"]
    result = _run("train.py", [*args, *broken], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for job, d_sae in ((0, 64), (1, 128)):
        cfg = json.loads((tmp_path / "s" / str(job) / "sae" / "cfg.json").read_text())
        assert (cfg["d_sae"], cfg["metadata"]["model_name"]) == (d_sae, "toy-1l")
