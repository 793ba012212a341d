from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sae_lightning.formats import load_saelens
from sae_lightning.saes import ReLUSAE, build_sae
from sae_lightning.training import train

ROOT = Path(__file__).resolve().parents[1]
STDLIB_SAMPLE = (
    "json/decoder.py",
    "json/encoder.py",
    "textwrap.py",
    "string.py",
    "shlex.py",
    "fnmatch.py",
    "glob.py",
    "heapq.py",
    "bisect.py",
    "colorsys.py",
    "csv.py",
    "dataclasses.py",
)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """A dozen stdlib modules: enough text for short runs, fast to tokenize."""
    import sysconfig

    folder = tmp_path_factory.mktemp("corpus")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for i, rel in enumerate(STDLIB_SAMPLE):
        (folder / f"{i:02d}_{Path(rel).name}").write_text((stdlib / rel).read_text())
    return folder


def small_run(corpus: Path) -> list[str]:
    """Overrides for a tiny run on the small corpus (in-process and command-line tests)."""
    return ["debug=fast", f"data.source.corpus={corpus}", "data.source.val_fraction=0.2"]


def make_cfg(out: Path, corpus: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                *small_run(corpus),
                f"paths.output_dir={out}",
                "callbacks.tokens_per_second.window=5",
                *overrides,
            ],
        )


def _ckpt_sae(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("sae."): v for k, v in state.items() if k.startswith("sae.")}


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory, small_corpus):
    out = tmp_path_factory.mktemp("run")
    metrics = train(make_cfg(out, small_corpus))
    return out, metrics


def test_fast_run_metrics_and_files(fast_run):
    out, metrics = fast_run
    for key in (
        "val/mse",
        "val/l0",
        "val/explained_variance",
        "val/loss_recovered",
        "val/kl",
        "val/ce_loss_clean",
        "val/ce_loss_sae",
        "val/ce_loss_zero_ablation",
        "val/dead_fraction",
    ):
        assert key in metrics, key
    assert (
        metrics["val/ce_loss_clean"]
        < metrics["val/ce_loss_sae"]
        < metrics["val/ce_loss_zero_ablation"]
    )
    expected = (metrics["val/ce_loss_zero_ablation"] - metrics["val/ce_loss_sae"]) / (
        metrics["val/ce_loss_zero_ablation"] - metrics["val/ce_loss_clean"]
    )
    assert metrics["val/loss_recovered"] == pytest.approx(expected, rel=1e-6)
    assert 0 < metrics["val/l0"] < 256 and 0 <= metrics["val/dead_fraction"] <= 1
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "metrics.json").is_file()


def test_exported_sae_reloads_and_encodes_identically(fast_run):
    out, _ = fast_run
    loaded, cfg = load_saelens(out / "sae")
    assert cfg["metadata"]["hook_name"] == "blocks.0.mlp.hook_post" and cfg["d_sae"] == 256
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["sae_config"] == {
        "architecture": "standard",
        "d_in": 1024,
        "d_sae": 256,
        "apply_b_dec_to_input": True,
    }
    trained = ReLUSAE(1024, 256)
    trained.load_state_dict(_ckpt_sae(out / "checkpoints" / "last.ckpt"))
    x = torch.randn(64, 1024, generator=torch.Generator().manual_seed(0)) * 0.3
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), trained.encode(x), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(loaded(x).x_hat, trained(x).x_hat, atol=1e-6, rtol=1e-5)


def test_tensorboard_has_scalars_and_density_histogram(fast_run):
    out, _ = fast_run
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    scalars, histograms = set(acc.Tags()["scalars"]), set(acc.Tags()["histograms"])
    for tag in (
        "train/mse",
        "train/l1",
        "train/l0",
        "train/explained_variance",
        "train/dead_fraction",
        "train/tokens_per_sec",
        "val/loss_recovered",
        "val/ce_loss_sae",
        "val/kl",
        "lr-Adam",
    ):
        assert tag in scalars, (tag, sorted(scalars))
    assert {"train/log10_feature_density", "val/log10_feature_density"} <= histograms
    assert "hparams/val/loss_recovered" in scalars  # final metrics next to the hyper-parameters
    l0 = [e.value for e in acc.Scalars("train/l0")]
    assert len(l0) >= 3 and all(0 <= v <= 256 for v in l0)
    hist = acc.Histograms("train/log10_feature_density")[-1].histogram_value
    assert hist.num == 256 and hist.max <= 0  # one entry per feature, log10 of a fraction


def test_resumed_run_ends_with_the_same_weights(tmp_path, small_corpus):
    full = make_cfg(tmp_path / "full", small_corpus, "trainer.max_steps=20")
    train(full)
    half = make_cfg(tmp_path / "half", small_corpus, "trainer.max_steps=10")
    train(half)
    resumed = make_cfg(
        tmp_path / "resumed",
        small_corpus,
        "trainer.max_steps=20",
        f"ckpt_path={tmp_path / 'half' / 'checkpoints' / 'last.ckpt'}",
    )
    train(resumed)
    a = _ckpt_sae(tmp_path / "full" / "checkpoints" / "last.ckpt")
    b = _ckpt_sae(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    halfway = _ckpt_sae(tmp_path / "half" / "checkpoints" / "last.ckpt")
    assert not torch.equal(a["W_enc"], halfway["W_enc"])  # the resumed run really trained on
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_batchtopk_run_normalised_resampled_exports_jumprelu(
    tmp_path, small_corpus, embedded_model
):
    """sae=batchtopk brings its loss; activations normalised to a mean squared norm of 1024;
    dead features resampled at step 10; the export is a JumpReLU SAE reading raw activations."""
    from sae_lightning.analysis.loading import load_sae

    out = tmp_path / "run"
    cfg = make_cfg(
        out,
        small_corpus,
        "sae=batchtopk",
        "sae.k=8",
        "module.activation_mean_sq_norm=1024",
        "callbacks=resample",
        "callbacks.dead_feature_resampler.resample_steps=[10]",
        "callbacks.dead_feature_resampler.sample_tokens=1024",
    )
    assert cfg.loss._target_ == "sae_lightning.losses.TopKLoss"
    metrics = train(cfg)
    assert 0 < metrics["val/l0"] < 64 and metrics["val/loss_recovered"] > 0
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    scale = float(state["state_dict"]["act_scale"])
    assert 1.5 < scale < 3  # raw activations have a mean squared norm of about 250
    exported, cfg_json = load_saelens(out / "sae")
    assert cfg_json["architecture"] == "jumprelu" and cfg_json["normalize_activations"] == "none"
    from_ckpt, _ = load_sae(out / "checkpoints" / "last.ckpt")
    trained = build_sae("batchtopk", d_in=1024, d_sae=256, k=8).eval()
    trained.load_state_dict(_ckpt_sae(out / "checkpoints" / "last.ckpt"))
    datamodule = instantiate(cfg.data)
    datamodule.set_model(embedded_model)
    x = datamodule.sample_activations(256).float()  # raw activations of the model
    with torch.no_grad():
        # the module's codes of raw activations, in export units: unit-norm decoder rows
        # after the 1 / scale of the output was folded in make the features 1 / scale larger
        codes = trained.encode(x * scale) / scale
        assert (codes > 0).sum() > 100
        for sae in (exported, from_ckpt):
            got = sae.encode(x)
            # folding rounds the pre-activations by an ulp: one that sits on the threshold
            # may flip (JumpReLU jumps there), nothing else moves
            flipped = (got > 0) != (codes > 0)
            assert flipped.float().mean() < 1e-3
            torch.testing.assert_close(got[~flipped], codes[~flipped], atol=1e-5, rtol=1e-4)


def test_bad_hook_name_is_one_clear_error(tmp_path, small_corpus):
    with pytest.raises(
        ValueError, match="'blocks.0.mlp.hook_pots' is not a hook point.*blocks.0.mlp.hook_post"
    ):
        train(make_cfg(tmp_path, small_corpus, "hook_name=blocks.0.mlp.hook_pots"))


def test_width_mismatch_is_one_clear_error(tmp_path, small_corpus):
    with pytest.raises(
        ValueError,
        match="sae.d_in=512 does not match the width 1024 of hook 'blocks.0.mlp.hook_post'",
    ):
        train(make_cfg(tmp_path, small_corpus, "sae.d_in=512"))


def test_unknown_config_key_is_one_clear_error(tmp_path, small_corpus):
    with pytest.raises(ConfigCompositionException, match="l1_cofe"):
        make_cfg(tmp_path, small_corpus, "loss.l1_cofe=3")
    with pytest.raises(InstantiationException, match="l1_cofe"):
        train(make_cfg(tmp_path, small_corpus, "+loss.l1_cofe=3"))


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["SAE_LIGHTNING_PWNED"]),))


def test_pickle_payload_checkpoint_is_refused_without_running(tmp_path, small_corpus, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("SAE_LIGHTNING_PWNED", str(marker))
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload()}, evil)
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|GLOBAL"):
        train(make_cfg(tmp_path / "run", small_corpus, f"ckpt_path={evil}"))
    assert not marker.exists()


def test_a_model_without_a_name_is_refused_before_training():
    from types import SimpleNamespace

    from sae_lightning.training import exported_model_name

    assert (
        exported_model_name(SimpleNamespace(cfg=SimpleNamespace(model_name="toy-1l"))) == "toy-1l"
    )
    with pytest.raises(ValueError, match="has no cfg.model_name"):
        exported_model_name(SimpleNamespace(cfg=SimpleNamespace(model_name=None)))
