"""bf16-mixed training (``trainer.precision=bf16-mixed``): the products run in bfloat16 under
``torch.autocast``, parameters, Adam state, the SAE's outputs and the export stay float32."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_train import _ckpt_sae, make_cfg, small_corpus  # noqa: F401
from torch.utils._python_dispatch import TorchDispatchMode

from sae_lightning.cpu_bf16 import cpu_flags, native_bf16
from sae_lightning.losses import GatedLoss, JumpReLULoss, L1Loss, TopKLoss
from sae_lightning.saes import GatedSAE, JumpReLUSAE, ReLUSAE, TopKSAE
from sae_lightning.training import train

PRODUCTS = {"mm", "addmm"}


class ProductDtypes(TorchDispatchMode):
    """Records the dtype of every dense matrix product (aten mm / addmm) it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if func.overloadpacket.__name__ in PRODUCTS:
            self.seen.add(args[1].dtype)
        return func(*args, **(kwargs or {}))


def _case(arch: str) -> tuple[Any, Any]:
    torch.manual_seed(0)
    if arch == "topk":
        return TopKSAE(64, 256, k=8), TopKLoss(dead_tokens=10**9)
    cls, loss = {
        "relu": (ReLUSAE, L1Loss(l1_coeff=1.0)),
        "jumprelu": (JumpReLUSAE, JumpReLULoss()),
        "gated": (GatedSAE, GatedLoss()),
    }[arch]
    return cls(64, 256, sparse_threshold=1.0), loss  # 1: always the sparse path


def _step(sae: Any, loss_fn: Any, x: torch.Tensor, bf16: bool) -> tuple[Any, Any, dict]:
    sae.zero_grad(set_to_none=True)
    with ProductDtypes() as products, torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        out = sae(x)
        lo = loss_fn(x, out, sae, 1000)
    lo.loss.backward()
    grads = {name: p.grad.clone() for name, p in sae.named_parameters() if p.grad is not None}
    return out, lo, {"grads": grads, "products": products.seen}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "gated", "topk"])
def test_sparse_path_under_autocast_is_bf16_inside_and_close_to_float32(arch: str) -> None:
    sae, loss_fn = _case(arch)
    x = torch.randn(128, 64) * 2
    out32, lo32, rec32 = _step(sae, loss_fn, x, bf16=False)
    assert out32.codes is not None
    out16, lo16, rec16 = _step(sae, loss_fn, x, bf16=True)
    assert out16.codes is not None  # the gather / scatter path was taken
    assert rec32["products"] == {torch.float32}
    assert torch.bfloat16 in rec16["products"]  # the encoder product ran in bf16
    for t in (out16.x_hat, out16.feature_acts, out16.codes.values, lo16.loss, lo16.mse):
        assert t.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2%) on the product's inputs.
    # TopK's selection is discontinuous: a near tie can swap a latent (each one moves x_hat)
    picked32, picked16 = (set((o.codes.rows * 256 + o.codes.cols).tolist()) for o in (out32, out16))
    assert len(picked16 & picked32) >= 0.95 * len(picked32)
    loose = 5 if arch == "topk" else 1
    assert _rel(out16.x_hat, out32.x_hat) < 2e-2 * loose
    assert abs(float(lo16.loss) - float(lo32.loss)) < 2e-2 * abs(float(lo32.loss))
    assert set(rec16["grads"]) == set(rec32["grads"])
    for name, grad in rec16["grads"].items():
        assert grad.dtype == torch.float32, name
        if name != "threshold":  # JumpReLU's straight-through window (bandwidth 1e-3) is
            # narrower than the bf16 product's rounding: which entries fall in it differs
            assert _rel(grad, rec32["grads"][name]) < 5e-2 * loose, name
    assert all(p.dtype == torch.float32 for p in sae.parameters())


def _watch_autocast(seen: list[bool]):
    def hook(module: torch.nn.Module, args: tuple) -> None:
        if module.training:
            enabled = torch.is_autocast_enabled("cpu")
            seen.append(enabled and torch.get_autocast_dtype("cpu") == torch.bfloat16)

    return hook


def _train_watched(cfg, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, list[bool]]:
    """``train(cfg)`` with a hook on the SAE recording autocast in each training forward."""
    import sae_lightning.training as training

    seen: list[bool] = []
    build = training.build_sae

    def build_watched(*args: Any, **kwargs: Any):
        sae = build(*args, **kwargs)
        sae.register_forward_pre_hook(_watch_autocast(seen))
        return sae

    monkeypatch.setattr(training, "build_sae", build_watched)
    return train(cfg), seen


def test_fast_bf16_run_trains_in_bf16_and_exports_float32(
    tmp_path: Path,
    small_corpus: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = make_cfg(
        tmp_path,
        small_corpus,
        "trainer.precision=bf16-mixed",
        "trainer.max_steps=6",
        "trainer.val_check_interval=6",
    )
    metrics, seen = _train_watched(cfg, monkeypatch)
    assert seen and all(seen)  # every training forward ran under bf16 autocast
    assert 0 < metrics["val/ce_loss_clean"] < metrics["val/ce_loss_zero_ablation"]
    weights = load_file(tmp_path / "sae" / "sae_weights.safetensors")
    assert {name: w.dtype for name, w in weights.items()} == dict.fromkeys(weights, torch.float32)
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["dtype"] == "float32"
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert all(v.dtype == torch.float32 for v in _ckpt_sae(last).values())
    ckpt = torch.load(last, weights_only=True)
    adam = ckpt["optimizer_states"][0]["state"]
    assert adam and all(
        s[k].dtype == torch.float32 for s in adam.values() for k in ("exp_avg", "exp_avg_sq")
    )


@pytest.mark.slow
@pytest.mark.skipif(
    native_bf16(cpu_flags()) is False,
    reason="this CPU has no bf16 arithmetic: torch emulates bf16 products (0.4 GFLOP/s on an "
    "AVX2 EPYC), so the 300 bf16 steps would take hours; it runs on a CPU with avx512_bf16 or "
    "amx_bf16",
)
def test_bf16_run_recovers_the_loss_of_float32(
    tmp_path: Path,
    small_corpus: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A few hundred steps both ways: loss recovered within 0.01, weights float32."""
    common = (
        "trainer.max_steps=300",
        "trainer.val_check_interval=300",
        "data.batch_size=512",
        "data.val_contexts=32",
        "sae.d_sae=2048",
        "sparsity_warmup_steps=100",
    )
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        out = tmp_path / precision
        cfg = make_cfg(out, small_corpus, f"trainer.precision={precision}", *common)
        metrics, seen = _train_watched(cfg, monkeypatch)
        assert seen and all(s == (precision == "bf16-mixed") for s in seen)
        weights = load_file(out / "sae" / "sae_weights.safetensors")
        assert all(w.dtype == torch.float32 for w in weights.values())
        results[precision] = metrics
    lr32, lr16 = (results[p]["val/loss_recovered"] for p in ("32-true", "bf16-mixed"))
    assert lr32 > 0.5  # trained far enough that the comparison means something
    assert abs(lr16 - lr32) < 0.01, (lr32, lr16)
    assert results["bf16-mixed"]["val/ce_loss_clean"] == pytest.approx(
        results["32-true"]["val/ce_loss_clean"], rel=1e-6
    )  # validation runs in float32 under either precision
