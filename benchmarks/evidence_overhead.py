"""What callbacks=feature_evidence adds to training, in process CPU time.

    python benchmarks/evidence_overhead.py [--steps 200] [--every 200] [override ...]
    python benchmarks/evidence_overhead.py --steps 20 --every 10 debug=fast   # a smoke run

Trains the same run twice in this process through ``train(cfg)`` (the real ``train.py``
path: data, validation, checkpoints, export), first with the default callbacks, then with
``callbacks=feature_evidence`` evaluating every ``--every`` steps, and prints process CPU
time (``time.process_time``: user + system of every thread, which the machine's other load
does not inflate as it does wall time): of each whole call and its ratio; of each fit loop
alone (first to last step, timed by a callback added to both runs: setup and export left
out, so the share is the larger, honest one); and the evaluations' own CPU time
(``evidence/cpu_seconds``, read back from the run's TensorBoard events) as a share of the
baseline's fit loop. ``--steps`` equal to ``--every`` (the defaults: the default interval
at the default model, data and SAE sizes) pays one evaluation per interval, as any longer
run at that interval does.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sae_lightning import training

ROOT = Path(__file__).resolve().parents[1]


class LoopClock(L.Callback):
    """Process CPU seconds from the first to the last training step (the fit loop alone:
    no model loading, corpus, initialisation or export)."""

    def __init__(self) -> None:
        self.start, self.seconds = 0.0, 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.process_time()

    def on_train_end(self, trainer, pl_module) -> None:
        self.seconds = time.process_time() - self.start


def run(out: Path, overrides: list[str]) -> tuple[float, float]:
    """Process CPU seconds of one ``train(cfg)`` with ``overrides`` (outputs in ``out``):
    the whole call, and its fit loop (:class:`LoopClock`, added to the run's callbacks)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={out}", *overrides])
    clock, callbacks = LoopClock(), training._callbacks
    training._callbacks = lambda *a, **k: [*callbacks(*a, **k), clock]
    try:
        start = time.process_time()
        training.train(cfg)
        return time.process_time() - start, clock.seconds
    finally:
        training._callbacks = callbacks


def evaluation_seconds(run_dir: Path) -> list[float]:
    """``evidence/cpu_seconds`` of every evaluation of a run."""
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.value for e in acc.Scalars("evidence/cpu_seconds")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps of each run")
    parser.add_argument("--every", type=int, default=200, help="steps between evaluations")
    parser.add_argument("overrides", nargs="*", help="train.py overrides for both runs")
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.WARNING)
    common = [
        f"trainer.max_steps={args.steps}",
        "+trainer.enable_progress_bar=false",
        *args.overrides,
    ]
    evidence = [
        "callbacks=feature_evidence",
        f"callbacks.feature_evidence.every_n_steps={args.every}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        (base, base_loop) = run(Path(tmp) / "baseline", common)
        (with_it, with_loop) = run(Path(tmp) / "evidence", [*common, *evidence])
        evals = evaluation_seconds(Path(tmp) / "evidence")
    per_eval = sum(evals) / max(len(evals), 1)
    print(f"overrides: {' '.join(common)}")
    print(f"baseline training        {base:8.1f} s CPU")
    n = len(evals)
    print(f"with feature_evidence    {with_it:8.1f} s CPU  ({n} evals, one per {args.every} steps)")
    print(f"overhead (ratio - 1)     {with_it / base - 1:8.1%}  (whole train() call)")
    print(f"fit loop alone           {base_loop:8.1f} s -> {with_loop:.1f} s CPU: "
          f"{with_loop / base_loop - 1:.1%}")  # fmt: skip
    share = sum(evals) / base_loop
    print(f"evaluations' own CPU     {sum(evals):8.1f} s  ({per_eval:.2f} s each) = "
          f"{share:.1%} of the baseline fit loop")  # fmt: skip


if __name__ == "__main__":
    main()
