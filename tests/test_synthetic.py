"""Planted ground truth: the synthetic dictionary, its data module and the recovery metrics."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sae_lightning.data.synthetic import DICTIONARY_FILE, SyntheticDataModule, SyntheticDictionary
from sae_lightning.metrics.recovery import best_cosines, mmcs, recovered_fraction


def test_codes_have_the_asked_sparsity_and_groups():
    d = SyntheticDictionary(
        d_in=16, n_features=64, p_active=0.05, n_groups=4, group_size=4, p_group=0.1, p_member=1.0
    )
    codes = d.sample_codes(20000, torch.Generator().manual_seed(0))
    active = codes > 0
    assert active[:, 16:].double().mean() == pytest.approx(0.05, abs=0.003)
    groups = active[:, :16].view(-1, 4, 4)  # [n, group, member]
    assert torch.equal(groups.all(dim=2), groups.any(dim=2))  # members fire together
    assert groups[..., 0].double().mean() == pytest.approx(0.1, abs=0.01)
    assert float(codes.max()) <= 1.0 and torch.allclose(d.directions.norm(dim=1), torch.ones(64))


def test_samples_are_codes_times_directions_and_deterministic():
    d = SyntheticDictionary(d_in=8, n_features=32, seed=3)
    x1 = d.sample(50, torch.Generator().manual_seed(1))
    codes = d.sample_codes(50, torch.Generator().manual_seed(1))
    torch.testing.assert_close(x1, codes @ d.directions)
    assert torch.equal(x1, d.sample(50, torch.Generator().manual_seed(1)))


def test_batches_depend_only_on_the_step_so_resume_is_exact():
    dm = SyntheticDataModule(SyntheticDictionary(d_in=8, n_features=16), batch_size=4, seed=5)
    first = [b for _, b in zip(range(5), iter(dm.train_dataloader()), strict=False)]
    dm.trainer = type("T", (), {"global_step": 3})()  # resumed at step 3
    resumed = next(iter(dm.train_dataloader()))
    assert torch.equal(resumed, first[3]) and not torch.equal(first[0], first[1])
    val = list(dm.val_dataloader())
    assert sum(len(b) for b in val) == dm.val_samples and val[0].shape[1] == 8


def test_recovery_metrics_known_answers(tmp_path):
    d = SyntheticDictionary(d_in=8, n_features=12)
    assert mmcs(d.directions, d.directions) == pytest.approx(1.0)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    learned = torch.cat([d.directions[perm] * 3.0, torch.zeros(2, 8)])  # scaled, shuffled, extra
    assert recovered_fraction(d.directions, learned) == 1.0
    half = learned.clone()
    half[:6] = -half[:6]  # anti-aligned directions are not recovered
    assert recovered_fraction(d.directions, half) == pytest.approx(0.5)
    cos = best_cosines(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    assert float(cos[0]) == pytest.approx(2**-0.5)
    saved = load_file(str(d.save(tmp_path)))["directions"]
    assert (tmp_path / DICTIONARY_FILE).is_file() and torch.equal(saved, d.directions)
    with pytest.raises(ValueError, match=r"must share d"):
        mmcs(d.directions, torch.zeros(3, 4))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_features": 0}, "n_features"),
        ({"p_active": 1.5}, "p_active"),
        ({"n_groups": 100}, "n_groups"),
    ],
)
def test_bad_settings_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticDictionary(**kwargs)


def test_training_on_synthetic_data_recovers_the_dictionary(tmp_path):
    import json
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from sae_lightning.analysis.loading import load_sae
    from sae_lightning.training import train

    root = Path(__file__).resolve().parents[1]
    with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=synthetic",
                f"paths.output_dir={tmp_path}",
                "data.dictionary.d_in=16",
                "data.dictionary.n_features=32",
                "data.batch_size=256",
                "data.val_samples=2048",
                "sae.d_sae=64",
                "sparsity_warmup_steps=50",
                "module.b_dec_init_tokens=1024",
                "trainer.max_steps=400",
                "trainer.val_check_interval=200",
                "+trainer.enable_progress_bar=false",
            ],
        )
    metrics = train(cfg)
    assert metrics["val/mmcs"] >= 0.9 and metrics["val/recovered"] >= 0.8, metrics
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["val/mmcs"] == (
        pytest.approx(metrics["val/mmcs"])
    )
    true = load_file(str(tmp_path / DICTIONARY_FILE))["directions"]  # the planted truth
    sae, meta = load_sae(tmp_path / "sae")  # the export reads back, with its synthetic origin
    assert meta["model_name"] == "synthetic" and mmcs(true, sae.W_dec) == pytest.approx(
        metrics["val/mmcs"], abs=1e-4
    )
    assert "loss_recovered" not in " ".join(metrics)  # no model: no spliced-in CE metrics
