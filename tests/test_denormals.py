"""flush_denormals: Adam's decaying first moments of dead latents become zero, not denormal."""

import platform

import pytest
import torch

from sae_lightning.denormals import flush_denormals

TINY = torch.finfo(torch.float32).tiny  # the smallest normal float32, 1.2e-38


def _denormal(t: torch.Tensor) -> int:
    return int(((t.abs() < TINY) & (t != 0)).sum())


def _adam_moments_after(steps: int) -> torch.Tensor:
    """The first moment of a parameter whose gradient was 1e-30 once and zero ever after."""
    p = torch.nn.Parameter(torch.ones(1000))
    opt = torch.optim.Adam([p], lr=1e-3)
    p.grad = torch.full_like(p, 1e-30)
    opt.step()
    for _ in range(steps):
        p.grad = torch.zeros_like(p)
        opt.step()
    return opt.state[p]["exp_avg"]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 FTZ/DAZ flags")
def test_dead_latents_moments_flush_to_zero_instead_of_staying_denormal():
    try:
        torch.set_flush_denormal(False)
        stuck = _adam_moments_after(400)  # 1e-31 * 0.9^400 is 1e-49: it sticks at 1.4e-45
        assert _denormal(stuck) == 1000
        assert flush_denormals() is True
        flushed = _adam_moments_after(400)
        assert _denormal(flushed) == 0 and int((flushed == 0).sum()) == 1000
        assert float(torch.tensor([1e-40]) * 1.0) == 0.0  # inputs too (DAZ)
        assert float(torch.tensor([2e-38]) * 1.0) == pytest.approx(2e-38)  # normals untouched
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 FTZ/DAZ flags")
def test_training_settles_the_process_with_denormals_flushed(monkeypatch):
    import sae_lightning.training as training

    try:
        torch.set_flush_denormal(False)
        assert float(torch.tensor([1e-40]) * 1.0) != 0.0
        training.settle_process(_cfg())
        assert float(torch.tensor([1e-40]) * 1.0) == 0.0  # flushed (DAZ)
        assert float(torch.tensor([2e-38]) * 1.0) == pytest.approx(2e-38)
    finally:
        torch.set_flush_denormal(False)

    def stop(cfg):
        raise RuntimeError(f"settled with seed {cfg.seed}")

    monkeypatch.setattr(training, "settle_process", stop)  # train() settles the process first
    with pytest.raises(RuntimeError, match="settled with seed 0"):
        training.train(_cfg())


def _cfg():
    from omegaconf import OmegaConf

    return OmegaConf.create({"seed": 0, "paths": {"output_dir": "unused"}, "hook_name": "x"})
