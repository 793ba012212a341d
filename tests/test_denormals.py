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


def test_training_flushes_denormals(monkeypatch):
    import sae_lightning.training as training

    calls = []
    monkeypatch.setattr(training, "flush_denormals", lambda: calls.append(1) or True)
    monkeypatch.setattr(
        training,
        "check_hook_name",
        lambda name: (_ for _ in ()).throw(RuntimeError("stop after the process settings")),
    )
    with pytest.raises(RuntimeError, match="stop after the process settings"):
        training.train(_cfg())
    assert calls == [1]


def _cfg():
    from omegaconf import OmegaConf

    return OmegaConf.create({"seed": 0, "paths": {"output_dir": "unused"}, "hook_name": "x"})
