"""The warning for bf16 training or a bf16 frozen model on a CPU that has no bf16 arithmetic
(torch emulates it there, hundreds of times slower than float32), and the flags it is decided
by."""

from __future__ import annotations

import logging

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_debug_fast import _compose
from test_pretrain import SHIPPED_TOKENIZER, _pretrain_cfg
from test_train import ROOT, small_corpus  # noqa: F401

from sae_lightning import cpu_bf16
from sae_lightning.cpu_bf16 import cpu_flags, emulated_bf16_warning, native_bf16

EPYC_AVX2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n\n"
XEON_BF16 = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE = "flags\t\t: avx2 avx512f amx_tile amx_bf16 amx_int8\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve i8mm bf16\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize(
    ("text", "native"), [(EPYC_AVX2, False), (XEON_BF16, True), (SAPPHIRE, True), (GRAVITON3, True)]
)
def test_flags_are_read_from_cpuinfo(tmp_path, text, native):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    flags = cpu_flags(path)
    assert "avx2" in flags or "asimd" in flags
    assert "processor" not in flags and "0" not in flags  # only the flags lines' values
    assert native_bf16(flags) is native


def test_unreadable_flags_are_unknown(tmp_path):
    assert cpu_flags(tmp_path / "missing") is None
    assert native_bf16(None) is None


PRECISION = ("trainer.precision", "trainer.precision=32-true")


def test_the_warning_names_the_setting_and_the_fix():
    message = emulated_bf16_warning(PRECISION[0], "bf16-mixed", PRECISION[1], True, {"avx2"})
    assert message.startswith("trainer.precision=bf16-mixed on a CPU without bf16 arithmetic")
    assert "avx512_bf16, amx_bf16, bf16" in message
    assert message.endswith("set trainer.precision=32-true")
    model = emulated_bf16_warning("model.dtype", "bfloat16", "model.dtype=float32", True, set())
    assert model.startswith("model.dtype=bfloat16 on a CPU without bf16 arithmetic")
    assert model.endswith("set model.dtype=float32")


@pytest.mark.parametrize(
    "value", ["bf16-mixed", "bf16-true", "bf16", "bfloat16", "torch.bfloat16", torch.bfloat16]
)
def test_every_spelling_of_bf16_is_warned(value):
    assert emulated_bf16_warning(*PRECISION[:1], value, PRECISION[1], True, {"avx2"}) is not None


@pytest.mark.parametrize(
    ("value", "on_cpu", "flags"),
    [
        ("32-true", True, {"avx2"}),  # not bf16
        ("16-mixed", True, {"avx2"}),
        ("float32", True, {"avx2"}),
        ("float16", True, {"avx2"}),
        ("bf16-mixed", False, {"avx2"}),  # a GPU run
        ("bf16-mixed", True, {"avx2", "avx512_bf16"}),  # native bf16
        ("bf16-mixed", True, None),  # flags unknown: no guess
    ],
)
def test_no_warning_where_bf16_is_not_emulated(value, on_cpu, flags):
    assert emulated_bf16_warning(PRECISION[0], value, PRECISION[1], on_cpu, flags) is None


def test_the_accelerator_decides_whether_the_run_is_on_the_cpu(caplog, monkeypatch):
    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": "bf16-mixed"}})
    with caplog.at_level(logging.WARNING, logger="sae_lightning.cpu_bf16"):
        message = cpu_bf16.warn_emulated_bf16(cfg, flags={"avx2"})
    assert message in caplog.text and message.startswith("trainer.precision=bf16-mixed ")
    cfg.trainer.accelerator = "gpu"
    assert cpu_bf16.warn_emulated_bf16(cfg, flags={"avx2"}) is None
    cfg.trainer.accelerator = "auto"  # the CPU unless CUDA is there
    monkeypatch.setattr(cpu_bf16.torch.cuda, "is_available", lambda: False)
    assert cpu_bf16.warn_emulated_bf16(cfg, flags={"avx2"}) == message
    monkeypatch.setattr(cpu_bf16.torch.cuda, "is_available", lambda: True)
    assert cpu_bf16.warn_emulated_bf16(cfg, flags={"avx2"}) is None
    assert cpu_bf16.warn_emulated_bf16(OmegaConf.create({"model": None}), flags=set()) is None


def test_a_bf16_frozen_model_on_the_cpu_is_warned_by_its_device(caplog, monkeypatch):
    from sae_lightning.models import freeze

    monkeypatch.setattr(cpu_bf16, "cpu_flags", lambda: {"avx2"})
    cpu_bf16._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="sae_lightning.cpu_bf16"):
        message = cpu_bf16.warn_emulated_model(torch.nn.Linear(4, 4, dtype=torch.bfloat16))
        cpu_bf16.warn_emulated_model(torch.nn.Linear(4, 4, dtype=torch.bfloat16))
    assert message.startswith("model.dtype=bfloat16 on a CPU") and "model.dtype=float32" in message
    assert caplog.text.count(message) == 1  # logged once, however many models load
    assert cpu_bf16.warn_emulated_model(torch.nn.Linear(4, 4)) is None  # float32
    on_meta = torch.nn.Linear(4, 4, dtype=torch.bfloat16, device="meta")  # not the CPU: fine
    assert cpu_bf16.warn_emulated_model(on_meta) is None
    assert cpu_bf16.warn_emulated_model(torch.nn.ReLU()) is None  # no weights
    seen = []
    monkeypatch.setattr("sae_lightning.models.warn_emulated_model", seen.append)
    model = torch.nn.Linear(4, 4, dtype=torch.bfloat16)
    assert freeze(model) is model and seen == [model]  # every loader's model passes there
    monkeypatch.setattr(cpu_bf16, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert cpu_bf16.warn_emulated_model(model) is None


def test_train_warns_before_anything_loads(tmp_path, caplog, monkeypatch):
    from sae_lightning.training import train

    monkeypatch.setattr(cpu_bf16, "cpu_flags", lambda: {"avx2"})
    cfg = _compose(
        "debug=fast",
        "trainer.precision=bf16-mixed",
        f"paths.output_dir={tmp_path / 'run'}",
        f"ckpt_path={tmp_path / 'missing.ckpt'}",  # stops train() before any work
    )
    with caplog.at_level(logging.WARNING, logger="sae_lightning.cpu_bf16"):
        with pytest.raises(FileNotFoundError, match="missing.ckpt does not exist"):
            train(cfg)
    assert "trainer.precision=bf16-mixed on a CPU without bf16 arithmetic" in caplog.text


def test_pretrain_warns_for_its_bf16_recipe(tmp_path, small_corpus, caplog, monkeypatch):  # noqa: F811
    from sae_lightning.toy.pretrain import pretrain

    monkeypatch.setattr(cpu_bf16, "cpu_flags", lambda: {"avx2"})
    # a tokenizer of another size stops pretraining before it trains
    cfg = _pretrain_cfg(
        tmp_path / "run", small_corpus, f"tokenizer={SHIPPED_TOKENIZER}", "vocab_size=1000"
    )
    assert cfg.trainer.precision == "bf16-mixed"
    with caplog.at_level(logging.WARNING, logger="sae_lightning.cpu_bf16"):
        with pytest.raises(ValueError, match="vocab_size is 1000"):
            pretrain(cfg)
    assert "trainer.precision=bf16-mixed on a CPU without bf16 arithmetic" in caplog.text


def test_analyze_warns_too(tmp_path, caplog, monkeypatch):
    from sae_lightning.analysis.run import analyze

    monkeypatch.setattr(cpu_bf16, "cpu_flags", lambda: {"avx2"})
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "analyze",
            overrides=[
                "sae_path=/no/such/sae",  # fails at loading, after the options are checked
                "trainer.precision=bf16-mixed",
                f"paths.output_dir={tmp_path / 'out'}",
            ],
        )
    with caplog.at_level(logging.WARNING, logger="sae_lightning.cpu_bf16"):
        with pytest.raises(FileNotFoundError, match="/no/such/sae"):
            analyze(cfg)
    assert "trainer.precision=bf16-mixed on a CPU without bf16 arithmetic" in caplog.text


def test_cache_activations_warns_for_a_bf16_model(tmp_path, caplog, monkeypatch):
    from hydra.utils import instantiate

    from sae_lightning.data import cache

    class Stop(Exception):
        pass

    class Data:  # stands in for the data module: stops once it is handed the loaded model
        def set_model(self, model):
            raise Stop

    def data_or_model(node, *args, **kwargs):
        return instantiate(node, *args, **kwargs) if node is cfg.model else Data()

    monkeypatch.setattr(cpu_bf16, "cpu_flags", lambda: {"avx2"})
    cpu_bf16._warn_once.cache_clear()
    monkeypatch.setattr(cache, "instantiate", data_or_model)  # no corpus is read
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("cache_activations", overrides=[f"path={tmp_path}", "model.dtype=bfloat16"])
    with caplog.at_level(logging.WARNING, logger="sae_lightning.cpu_bf16"):
        with pytest.raises(Stop):
            cache.cache_activations(cfg)
    assert "model.dtype=bfloat16 on a CPU without bf16 arithmetic" in caplog.text
