"""N SAEs trained in one process on one activation stream (``saes=``) vs N separate runs.

    python benchmarks/multi_sae.py [--n 4] [--d-sae 1024] [--batch 1024] [--steps 60]
                                   [--precision 32-true|bf16-mixed] [--device cpu|cuda]
    python benchmarks/multi_sae.py --full      # the default run's shapes (d_sae 4096, 1600 steps)

Both sides run ``train(cfg)`` in this process, end to end (model load, data, the Lightning
fit, one validation at the end, export): the multi-SAE run once, then each SAE's solo run
(``<same overrides> <its overrides> saes=null``) one after the other. The SAEs are ReLU SAEs
at L1 coefficients 1, 2, 4, 8, ... Prints each wall and CPU time, the separate runs' sums,
and the ratios (separate / multi). Every solo run also checks that its SAE equals the multi run's.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from safetensors.torch import load_file

from sae_lightning.console import quiet_known_noise
from sae_lightning.training import train

ROOT = Path(__file__).resolve().parents[1]


def timed_train(overrides: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of ``train(cfg)`` for ``python train.py <overrides>`` (HydraConfig
    set). The CPU time of this process is the figure to trust on a shared, loaded machine."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg.hydra
        start, cpu = time.perf_counter(), time.process_time()
        try:
            train(cfg)
        finally:
            HydraConfig.instance().cfg = None
        return time.perf_counter() - start, time.process_time() - cpu


def _fmt(seconds: tuple[float, float]) -> str:
    return f"wall {seconds[0]:7.1f} s, CPU {seconds[1]:7.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4, help="SAEs")
    parser.add_argument("--d-sae", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--full", action="store_true", help="d_sae 4096, 1600 steps")
    args = parser.parse_args()
    if args.full:
        args.d_sae, args.steps = 4096, 1600
    logging.getLogger("lightning").setLevel(logging.WARNING)
    quiet_known_noise()
    trainer = "gpu" if args.device == "cuda" else "cpu"
    base = [
        f"trainer={trainer}",
        f"trainer.precision={args.precision}",
        f"sae.d_sae={args.d_sae}",
        f"data.batch_size={args.batch}",
        f"trainer.max_steps={args.steps}",
        f"trainer.val_check_interval={args.steps}",
        "+trainer.enable_progress_bar=false",
        f"sparsity_warmup_steps={min(300, args.steps // 4)}",
    ]
    coeffs = [2**i for i in range(args.n)]
    saes = ",".join(f"l1_{c}:['loss.l1_coeff={c}']" for c in coeffs)
    print(
        f"{args.n} ReLU SAEs d_sae {args.d_sae}, batch {args.batch}, {args.steps} steps, "
        f"{args.precision} on {args.device}; torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        multi = Path(tmp) / "multi"
        t_multi = timed_train([*base, f"saes={{{saes}}}", f"paths.output_dir={multi}"])
        print(f"one process, {args.n} SAEs: {_fmt(t_multi)}")
        separate = []
        for c in coeffs:
            solo = Path(tmp) / f"solo_{c}"
            separate.append(
                timed_train([*base, f"loss.l1_coeff={c}", "saes=null", f"paths.output_dir={solo}"])
            )
            mine = load_file(multi / "saes" / f"l1_{c}" / "sae" / "sae_weights.safetensors")
            alone = load_file(solo / "sae" / "sae_weights.safetensors")
            same = all(torch.equal(mine[k], alone[k]) for k in alone)
            print(f"separate run l1_coeff={c}: {_fmt(separate[-1])}  same weights: {same}")
    total = tuple(sum(t[i] for t in separate) for i in range(2))
    print(f"{args.n} separate runs:       {_fmt(total)}")
    print(
        f"ratio separate / one process: wall {total[0] / t_multi[0]:.2f}x, "
        f"CPU {total[1] / t_multi[1]:.2f}x"
    )
    print(f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
