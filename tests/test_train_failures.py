"""How training fails: divergence, dead runs, bad hyper-parameters, signals, an occupied run
folder, bad checkpoints to resume from, a full disk (issue 13)."""

# ruff: noqa: F811  (the small_corpus fixture is imported from test_train, then requested)

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file
from test_train import ROOT, _ckpt_sae, make_cfg, small_corpus, small_run  # noqa: F401
from torch.optim.lr_scheduler import LambdaLR

import sae_lightning.finish as finish
import sae_lightning.training as training
from sae_lightning.cli import user_errors
from sae_lightning.disk import DiskCheckedIO, DiskFullError, writing
from sae_lightning.guards import TrainingDiverged, TrainingInterrupted
from sae_lightning.preflight import check_run_folder
from sae_lightning.training import train

TINY = ["sae.d_sae=16", "+trainer.enable_progress_bar=false"]


def jump_after_warmup(
    optimizer, total_steps, warmup_steps=0, decay="none", decay_fraction=0.2, min_ratio=0.0
) -> LambdaLR:
    """A schedule for the divergence test: 1e-33 x the base lr for ``warmup_steps``, then 1."""
    return LambdaLR(optimizer, lambda step: 1e-33 if step < warmup_steps else 1.0)


class SignalAt(L.Callback):
    """Sends ``signum`` to this process at the end of optimiser step ``step``."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def _no_model(monkeypatch) -> None:
    """Make loading the data or the model fail the test: checks must come before."""

    def refuse(*args, **kwargs):
        raise AssertionError("instantiate() ran: the check came after the model loaded")

    monkeypatch.setattr(training, "instantiate", refuse)


def test_divergence_stops_with_one_message_and_keeps_the_finite_checkpoint(tmp_path, small_corpus):
    # lr 1e30 held at 1e-3 by the schedule for 5 steps: validation at step 4 writes
    # last.ckpt; Adam's 6th step (at 1e30) moves weights by ~1e30, still finite in float32,
    # and the loss of step 7 overflows
    out = tmp_path / "run"
    cfg = make_cfg(
        out,
        small_corpus,
        *TINY,
        "trainer.val_check_interval=4",
        "module.optimizer.lr=1e30",
        "module.scheduler._target_=test_train_failures.jump_after_warmup",
        "module.scheduler.warmup_steps=5",
    )
    with pytest.raises(TrainingDiverged) as caught:
        train(cfg)
    message = str(caught.value)
    assert message.startswith("training diverged at step 7: the loss is nan; ")
    assert "the parameters W_enc" in message and "module.optimizer.lr=1e+30" in message
    assert "too high" in message and str(out / "checkpoints" / "last.ckpt") in message
    assert not (out / "sae").exists() and not (out / "metrics.json").exists()
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    with pytest.raises(SystemExit) as ended:  # the command line: one line, exit status 1
        with user_errors("train.py"):
            raise caught.value
    assert ended.value.code == f"train.py: TrainingDiverged: {message}"


def test_a_run_whose_features_all_die_warns_and_records_it(tmp_path, small_corpus, caplog):
    out = tmp_path / "run"
    cfg = make_cfg(out, small_corpus, *TINY, "module.optimizer.lr=1e6", "trainer.max_steps=10")
    metrics = train(cfg)
    assert metrics["val/dead_fraction"] == 1.0 and metrics["val/l0"] == 0.0
    record = json.loads((out / "metrics.json").read_text())
    assert len(record["warnings"]) == 1
    assert record["warnings"][0].startswith("every feature is dead at the end of training")
    assert "Lower module.optimizer.lr=1e+06 " in record["warnings"][0]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert record["warnings"][0] in warned


def test_a_run_without_validation_warns_and_records_it(tmp_path, small_corpus):
    out = tmp_path / "run"
    metrics = train(make_cfg(out, small_corpus, *TINY, "trainer.max_steps=3"))
    assert metrics == {}
    (warning,) = json.loads((out / "metrics.json").read_text())["warnings"]
    assert warning.startswith("validation never ran") and "trainer.val_check_interval" in warning


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("module.optimizer.lr=0", "module.optimizer.lr=0 must be > 0"),
        ("module.optimizer.lr=-0.001", "module.optimizer.lr=-0.001 must be > 0"),
        ("module.optimizer.lr=nan", "module.optimizer.lr=nan is not a finite number"),
        ("loss.l1_coeff=inf", "loss.l1_coeff=inf is not a finite number"),
        ("module.optimizer.betas=[1.5,0.999]", "module.optimizer: Invalid beta parameter.*1.5"),
        ("module.scheduler.warmup_steps=-5", "module.scheduler: warmup_steps must be >= 0"),
        ("loss.l1_coeff=-1", "loss: l1_coeff must be >= 0, got -1"),
    ],
)
def test_bad_hyper_parameters_are_refused_before_the_model_loads(
    tmp_path, small_corpus, monkeypatch, override, message
):
    cfg = make_cfg(tmp_path / "run", small_corpus, override)
    _no_model(monkeypatch)
    with pytest.raises(ValueError, match=message):
        train(cfg)


def test_an_occupied_run_folder_is_refused_unless_resuming_from_it(
    tmp_path, small_corpus, monkeypatch
):
    exported, checkpointed = tmp_path / "exported", tmp_path / "checkpointed"
    (exported / "sae").mkdir(parents=True)
    (exported / "sae" / "cfg.json").write_text("{}")
    (checkpointed / "checkpoints").mkdir(parents=True)
    (checkpointed / "checkpoints" / "last.ckpt").write_bytes(b"x")
    _no_model(monkeypatch)
    for out, held in ((exported, "sae/cfg.json"), (checkpointed, "checkpoints/last.ckpt")):
        with pytest.raises(ValueError) as caught:
            train(make_cfg(out, small_corpus))
        assert str(caught.value) == (
            f"the run folder {out} already holds a trained run ({held}); train into a new "
            f"folder (paths.output_dir=... or hydra.run.dir=...), or resume this run with "
            f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"
        )
    check_run_folder(checkpointed, checkpointed / "checkpoints" / "last.ckpt")  # resuming: fine
    check_run_folder(tmp_path / "fresh", None)
    with pytest.raises(ValueError, match="already holds a trained run"):  # resuming another run
        check_run_folder(exported, checkpointed / "checkpoints" / "last.ckpt")


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _bad_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the message must say)."""
    folder.mkdir()
    good = folder / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(4096)}, "optimizer_states": [], "loops": {}}, good)
    (folder / "empty.ckpt").write_bytes(b"")
    (folder / "truncated.ckpt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save({"state_dict": {}, "payload": _Payload()}, folder / "pickle.ckpt")
    torch.save({"W_enc": torch.ones(2)}, folder / "weights.ckpt")
    return {
        "missing": (folder / "nowhere.ckpt", "does not exist"),
        "empty": (folder / "empty.ckpt", r"is empty \(0 bytes\), not a checkpoint"),
        "truncated": (folder / "truncated.ckpt", r"\(\d+ bytes\) is truncated or not a checkpoint"),
        "pickle": (folder / "pickle.ckpt", "is not a safe checkpoint: it holds the pickled global"),
        "weights": (folder / "weights.ckpt", "is not a Lightning training checkpoint"),
    }


def test_bad_checkpoints_to_resume_from_are_named_before_the_model_loads(
    tmp_path, small_corpus, monkeypatch
):
    cases = _bad_checkpoints(tmp_path / "ckpts")
    _no_model(monkeypatch)
    for name, (path, says) in cases.items():
        cfg = make_cfg(tmp_path / name, small_corpus, f"ckpt_path={path}")
        with pytest.raises((ValueError, FileNotFoundError)) as caught:
            train(cfg)
        message = str(caught.value)
        assert message.startswith(f"ckpt_path={path} "), (name, message)
        assert re.search(says, message), (name, message)
        assert "weights_only" not in message and "trust" not in message, (name, message)


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_names_the_file_and_the_bytes_it_needed(tmp_path, small_corpus, monkeypatch):
    import lightning.fabric.plugins.io.torch_io as torch_io

    with monkeypatch.context() as patch:
        patch.setattr(torch_io, "_atomic_save", _no_space)
        io = DiskCheckedIO(torch_io.TorchCheckpointIO())
        target = tmp_path / "checkpoints" / "last.ckpt"
        with pytest.raises(DiskFullError) as caught:
            io.save_checkpoint({"state_dict": {"w": torch.zeros(1024)}, "step": 3}, target)
    assert str(caught.value).startswith(
        f"no space left on the device writing {target} (about 4.0 KiB needed, "
    )
    # TensorBoard wraps the OSError in a ValueError ("you tried to log ..."): still a full disk
    with pytest.raises(DiskFullError, match=f"writing {re.escape(str(tmp_path))} \\("):
        with writing(tmp_path):
            try:
                _no_space()
            except OSError as err:
                raise ValueError("you tried to log 243.88 which is not supported") from err
    # the export, end to end (16 features x 1024 inputs, float32, both directions + biases)
    monkeypatch.setattr(finish, "save_saelens", _no_space)  # where the run's end exports
    out = tmp_path / "run"
    with pytest.raises(DiskFullError) as caught:
        train(make_cfg(out, small_corpus, *TINY, "trainer.max_steps=2"))
    needed = (2 * 16 * 1024 + 16 + 1024) * 4 / 1024
    assert str(caught.value).startswith(
        f"no space left on the device writing {out / 'sae'} (about {needed:.1f} KiB needed, "
    )
    assert "paths.output_dir" in str(caught.value)
    with pytest.raises(SystemExit) as ended:  # the command line: one line, exit status 1
        with user_errors("train.py"):
            raise caught.value
    assert ended.value.code == f"train.py: DiskFullError: {caught.value}"


def test_ctrl_c_saves_a_resumable_checkpoint_and_restores_the_handler(tmp_path, small_corpus):
    out, before = tmp_path / "run", signal.getsignal(signal.SIGINT)
    cfg = make_cfg(
        out,
        small_corpus,
        *TINY,
        "+callbacks.signal_at._target_=test_train_failures.SignalAt",
        "+callbacks.signal_at.step=4",
        f"+callbacks.signal_at.signum={int(signal.SIGINT)}",
    )
    with pytest.raises(TrainingInterrupted) as caught:
        train(cfg)
    stop, ckpt = caught.value, out / "checkpoints" / "last.ckpt"
    assert (stop.signum, stop.step, stop.exit_code, stop.checkpoint) == (2, 4, 130, ckpt)
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 4
    assert not (out / "sae").exists() and signal.getsignal(signal.SIGINT) is before


def _wait_for(path: Path, text: str, proc: subprocess.Popen, deadline_s: float = 600) -> None:
    """Poll ``path`` until it holds ``text`` (the process must still be running)."""
    end = time.monotonic() + deadline_s
    while text not in (path.read_text() if path.exists() else ""):
        assert proc.poll() is None, f"train.py ended early with status {proc.returncode}"
        assert time.monotonic() < end, f"no {text!r} in {path}"
        time.sleep(0.1)


def test_sigterm_exits_143_with_a_resume_command_and_resuming_is_exact(tmp_path, small_corpus):
    run = tmp_path / "run"
    args = [*small_run(small_corpus), f"paths.output_dir={run}", *TINY, "trainer.max_steps=100000"]
    logs = {name: tmp_path / f"{name}.txt" for name in ("stdout", "stderr")}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    with logs["stdout"].open("w") as stdout, logs["stderr"].open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args],
            cwd=tmp_path, env=env, stdout=stdout, stderr=stderr,
        )  # fmt: skip
        try:
            _wait_for(logs["stdout"], "training started: SIGTERM or Ctrl-C", proc)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=300) == 143, logs["stderr"].read_text()[-3000:]
        finally:
            proc.kill()
    ckpt = run / "checkpoints" / "last.ckpt"
    step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    lines = logs["stderr"].read_text().strip().splitlines()
    assert lines[-2] == (
        f"train.py: stopped by SIGTERM at step {step}; the resumable checkpoint is {ckpt}"
    )
    command = shlex.split(lines[-1].removeprefix("resume with: "))
    assert command == ["python", "train.py", *args, f"ckpt_path={ckpt}"]
    assert step >= 1 and not (run / "sae").exists()
    # resume with the printed overrides (a few more steps), against an uninterrupted run
    more = [a.replace("=100000", f"={step + 3}") for a in command[2:]]
    stopped = _ckpt_sae(ckpt)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        train(compose("train", overrides=more))
    reference = make_cfg(tmp_path / "ref", small_corpus, *TINY, f"trainer.max_steps={step + 3}")
    train(reference)
    resumed, straight = _ckpt_sae(ckpt), _ckpt_sae(tmp_path / "ref" / "checkpoints" / "last.ckpt")
    assert not torch.equal(resumed["W_enc"], stopped["W_enc"])  # the resumed run trained on
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key
    exported = load_file(run / "sae" / "sae_weights.safetensors")
    expected = load_file(tmp_path / "ref" / "sae" / "sae_weights.safetensors")
    assert exported.keys() == expected.keys()
    assert all(torch.equal(exported[k], expected[k]) for k in expected)


class _FakeTrainer:
    """What DivergenceGuard reads of a trainer: one rank, no checkpoint yet."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.global_step, self.checkpoint_callbacks = 7, []
        self.optimizers = [torch.optim.SGD(module.parameters(), lr=1e-3)]
        self.strategy = type("Strategy", (), {"reduce": lambda self, t, reduce_op: t})()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_divergence_guard_names_a_non_finite_weight_under_a_finite_loss(bad: float) -> None:
    """The per-parameter check (a sum per parameter) finds a single nan / inf entry and the
    message names that parameter only."""
    from sae_lightning.guards import DivergenceGuard
    from sae_lightning.saes import ReLUSAE

    module = torch.nn.Module()
    module.sae = ReLUSAE(8, 32)
    with torch.no_grad():
        module.sae.W_dec[5, 3] = bad
    trainer = _FakeTrainer(module)
    with pytest.raises(TrainingDiverged, match=r"the parameters W_dec are not finite") as err:
        DivergenceGuard().on_train_batch_end(trainer, module, {"loss": torch.tensor(0.5)}, None, 0)
    assert "step 7: the loss is finite" in str(err.value)


def test_divergence_guard_lets_finite_weights_whose_sum_overflows_pass() -> None:
    """Two entries of 3e38 sum to inf in float32, but every weight is finite: no stop."""
    from sae_lightning.guards import DivergenceGuard
    from sae_lightning.saes import ReLUSAE

    module = torch.nn.Module()
    module.sae = ReLUSAE(8, 32)
    with torch.no_grad():
        module.sae.W_enc[0, :2] = 3e38
    assert not torch.isfinite(module.sae.W_enc.sum())
    DivergenceGuard().on_train_batch_end(
        _FakeTrainer(module), module, {"loss": torch.tensor(0.5)}, None, 0
    )
    with pytest.raises(TrainingDiverged, match="the loss is nan; the weights are still finite"):
        DivergenceGuard().on_train_batch_end(
            _FakeTrainer(module), module, {"loss": torch.tensor(float("nan"))}, None, 0
        )
