"""Resampling of dead features, AuxK, LR schedules and activation normalisation, on small
synthetic activations (sparse combinations of a few ground-truth directions)."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from sae_lightning.losses import L1Loss, TopKLoss
from sae_lightning.module import SAEModule
from sae_lightning.resampling import DeadFeatureResampler, reset_feature_state
from sae_lightning.saes import ReLUSAE, TopKSAE
from sae_lightning.schedules import lr_multiplier, warmup_decay

D_IN = 16


class Synthetic:
    """Tokens = sparse non-negative mixtures of ``n_true`` unit directions (each present with
    probability ``p``), plus an offset of norm about ``sqrt(d_in) * offset``."""

    def __init__(
        self,
        n_true: int = 24,
        seed: int = 0,
        scale: float = 1.0,
        d_in: int = D_IN,
        p: float = 0.12,
        offset: float = 1.0,
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        dirs = torch.randn(n_true, d_in, generator=gen)
        self.dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        self.offset = offset * torch.randn(d_in, generator=gen)
        self.gen, self.scale, self.p = gen, scale, p

    def sample(self, n: int) -> torch.Tensor:
        on = torch.rand(n, self.dirs.shape[0], generator=self.gen) < self.p
        mags = torch.rand(n, self.dirs.shape[0], generator=self.gen) * 3
        return self.scale * ((on * mags) @ self.dirs + self.offset)


class _Stream(IterableDataset):
    def __init__(self, data: Synthetic, batch: int) -> None:
        self.data, self.batch = data, batch

    def __iter__(self):
        while True:
            yield self.data.sample(self.batch)


class SyntheticData(L.LightningDataModule):
    def __init__(self, data: Synthetic, batch: int = 256) -> None:
        super().__init__()
        self.data, self.batch = data, batch

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Stream(self.data, self.batch), batch_size=None)

    def sample_activations(self, n: int) -> torch.Tensor:
        return self.data.sample(n)


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.fired: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        self.fired.append((outputs["feature_acts"] > 0).any(0))


def fit(module: SAEModule, steps: int, callbacks: list, data: Synthetic | None = None) -> None:
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module, datamodule=SyntheticData(data or Synthetic()))


def adam(params):
    return torch.optim.Adam(params, lr=3e-3)


def test_resampling_revives_forced_dead_features_without_a_loss_spike() -> None:
    torch.manual_seed(0)
    sae = ReLUSAE(D_IN, 48)
    forced = torch.arange(0, 48, 4)  # 12 features that can never fire: zero gradient, no Adam
    with torch.no_grad():
        sae.b_enc[forced] = -1e3
    module = SAEModule(sae, L1Loss(l1_coeff=0.05), adam, b_dec_init="mean")
    resampler = DeadFeatureResampler(resample_steps=[60], sample_tokens=2048)
    recorder = LossRecorder()
    fit(module, 120, [resampler, recorder])
    assert len(resampler.history) == 1 and resampler.history[0]["step"] == 60
    assert resampler.history[0]["resampled"] >= len(forced)
    before = torch.stack(recorder.fired[:60]).any(0)
    after = torch.stack(recorder.fired[60:]).any(0)
    assert not before[forced].any()  # really dead until step 60
    assert after[forced].float().mean() >= 0.75  # most of them fire again
    assert (sae.b_enc[forced].abs() < 1).all()  # their -1e3 bias was reset
    losses = torch.tensor(recorder.losses)
    reference = losses[50:60].mean()
    # the stated bound: no step in the 20 after resampling exceeds 1.5x the loss before it
    assert losses[60:80].max() <= 1.5 * reference
    assert losses[-10:].mean() < reference  # and training goes on improving


def test_reset_feature_state_zeroes_only_those_features() -> None:
    sae = ReLUSAE(4, 6)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sae(torch.randn(8, 4)).x_hat.pow(2).sum().backward()
    opt.step()
    index = torch.tensor([1, 4])
    reset_feature_state(opt, sae, index)
    for name, dim in sae.feature_params.items():
        for key in ("exp_avg", "exp_avg_sq"):
            moment = opt.state[getattr(sae, name)][key]
            assert (moment.index_select(dim, index) == 0).all(), (name, key)
            keep = torch.tensor([0, 2, 3, 5])
            assert (moment.index_select(dim, keep) != 0).any(), (name, key)
    assert (opt.state[sae.b_dec]["exp_avg"] != 0).any()  # not a per-feature parameter


def _dead_fraction_after(auxk_coeff: float, seed: int = 0) -> float:
    """Dead fraction of a TopK SAE narrower than the data (512 true directions in d_in 32,
    256 latents, k 4) trained at a high learning rate: a setting that kills latents."""
    torch.manual_seed(seed)
    data = Synthetic(n_true=512, seed=1, d_in=32, p=0.02, offset=0.0)
    sae = TopKSAE(32, 256, k=4)
    loss_fn = TopKLoss(auxk_coeff=auxk_coeff, k_aux=16, dead_tokens=10 * 256)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-2)
    with torch.no_grad():
        sae.b_dec.copy_(data.sample(2048).mean(0))
    fired = torch.zeros(256, dtype=torch.bool)
    for step in range(300):
        x = data.sample(256)
        out = sae(x)
        loss_fn(x, out, sae, step).loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        sae.set_decoder_norm_to_unit_norm()
        if step >= 250:  # dead: silent over the last 50 steps (12,800 tokens)
            fired |= (out.feature_acts > 0).any(0)
    return 1 - fired.float().mean().item()


@pytest.mark.parametrize("seed", [0, 1])
def test_auxk_reduces_the_dead_fraction(seed: int) -> None:
    without = _dead_fraction_after(0.0, seed)
    with_auxk = _dead_fraction_after(1 / 32, seed)  # Gao et al.'s coefficient
    assert without >= 0.2  # this configuration produces dead latents (0.31 and 0.22)
    assert with_auxk <= 0.8 * without  # AuxK revives about a third of them (0.21 and 0.14)


def test_lr_schedule_warmup_and_decays() -> None:
    assert lr_multiplier(0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert lr_multiplier(9, 100, warmup_steps=10) == 1.0
    assert lr_multiplier(79, 100, 10, "linear", 0.2) == 1.0
    assert lr_multiplier(90, 100, 10, "linear", 0.2) == pytest.approx(0.5)
    assert lr_multiplier(90, 100, 10, "cosine", 0.2) == pytest.approx(0.5)
    assert lr_multiplier(85, 100, 10, "cosine", 0.2) == pytest.approx(0.5 * (1 + 2**-0.5))
    assert lr_multiplier(100, 100, 10, "linear", 0.2, min_ratio=0.1) == pytest.approx(0.1)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    sched = warmup_decay(opt, total_steps=10, warmup_steps=2, decay="linear", decay_fraction=0.5)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.6, 1.2, 0.8, 0.4])
    with pytest.raises(ValueError, match=r"unknown lr decay 'exp'; valid: \['none', 'linear'"):
        warmup_decay(opt, 10, decay="exp")  # type: ignore[arg-type]


def test_activation_normalisation_reaches_the_target_and_is_used() -> None:
    torch.manual_seed(0)
    data = Synthetic(scale=7.0)
    module = SAEModule(ReLUSAE(D_IN, 32), L1Loss(0.01), adam, activation_mean_sq_norm=16.0)
    fit(module, 3, [], data)
    raw = data.sample(8192)
    scaled = raw * module.act_scale
    assert scaled.pow(2).sum(-1).mean().item() == pytest.approx(16.0, rel=0.05)
    assert module.act_scale.item() < 0.5  # the raw activations were much larger
    with pytest.raises(ValueError, match="activation_mean_sq_norm must be > 0 or null, got -1"):
        SAEModule(ReLUSAE(D_IN, 32), L1Loss(0.01), adam, activation_mean_sq_norm=-1.0)


def test_topk_firing_counters_survive_a_checkpoint_but_not_the_export(tmp_path):
    from sae_lightning.formats import load_saelens, save_saelens

    def module():
        return SAEModule(TopKSAE(D_IN, 32, k=4), TopKLoss(), adam)

    trained = module().train()
    trained.sae(torch.randn(3, D_IN, generator=torch.Generator().manual_seed(0)))
    counters = trained.sae.tokens_since_fired.clone()
    assert counters.max() == 3 and counters.min() == 0  # <= 12 of 32 fired
    checkpoint: dict = {}
    trained.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "c.ckpt")
    resumed = module()
    resumed.on_load_checkpoint(torch.load(tmp_path / "c.ckpt", weights_only=True))
    assert torch.equal(resumed.sae.tokens_since_fired, counters)
    assert "tokens_since_fired" not in trained.sae.state_dict()
    meta = {"model_name": "m", "hook_name": "h", "context_size": 8, "prepend_bos": True}
    folder = save_saelens(trained.sae, tmp_path / "sae", meta)
    loaded = load_saelens(folder)[0].to("cpu")  # its counters are real zeros, not meta tensors
    assert loaded.tokens_since_fired.eq(0).all() and not loaded.tokens_since_fired.is_meta
