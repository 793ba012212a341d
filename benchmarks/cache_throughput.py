"""Training tokens/s from an activation cache against the live stream, same settings, one run.

    python benchmarks/cache_throughput.py [--d-sae 4096] [--batch 4096] [--steps 12]
        [--corpus FOLDER] [--val-fraction 0.2] [--cache /tmp/sae_cache_bench]

Both runs go through the Lightning Trainer with the ReLU SAE (Adam, decoder normalisation) on
``blocks.0.mlp.hook_post`` of the embedded model, the same buffer and seed. The live run
computes the frozen forward on every refill; the cached run reads the shards written once by
``cache_activations`` (the cache's own writing time is printed separately). Steps after the
first two are timed; the streams alone (no SAE step) are timed too. The machine's load
(``uptime``) is printed: on a shared machine the figures move with it.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import time
from functools import partial

import torch
from train_throughput import cache_config, fit_timer

from sae_lightning.data.cache import cache_activations
from sae_lightning.data.cached import CachedDataModule
from sae_lightning.data.datamodule import ActivationDataModule
from sae_lightning.data.sources import CorpusSource
from sae_lightning.losses import L1Loss
from sae_lightning.models import load_embedded
from sae_lightning.module import SAEModule
from sae_lightning.saes import ReLUSAE

WARMUP = 2


def tokens_per_second(datamodule, model, d_sae: int, steps: int) -> float:
    spec = None if datamodule.model_free else datamodule.set_model(model)
    optimizer = partial(torch.optim.Adam, lr=1e-4)
    module = SAEModule(ReLUSAE(1024, d_sae), L1Loss(2.0), optimizer, b_dec_init="zeros")
    if spec is not None:
        module.set_spec(spec)
    # max_steps = steps, the first WARMUP untimed, as train_throughput's loop
    return fit_timer(module, datamodule, steps - WARMUP, "cpu", warmup=WARMUP).rate


def stream_rate(datamodule, batches: int) -> float:
    """Activations/s of the data alone: the stream's batches, no SAE step."""
    stream = iter(datamodule.make_stream())
    next(stream)
    start = time.perf_counter()
    n = sum(len(next(stream)) for _ in range(batches))
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--corpus", default="stdlib")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--cache", default="/tmp/sae_cache_bench")
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    data = {"batch_size": args.batch, "buffer_tokens": 4 * args.batch, "contexts_per_forward": 32}
    cfg = cache_config(
        [f"data.source.corpus={args.corpus}", f"path={args.cache}"]
        + [f"data.source.val_fraction={args.val_fraction}"]
        + [f"data.{k}={v}" for k, v in data.items()]
    )
    start = time.perf_counter()
    cache_activations(cfg)  # resumes (writes nothing) when the cache is there already
    written = time.perf_counter() - start
    model = load_embedded()
    source = CorpusSource(args.corpus, val_fraction=args.val_fraction)
    live = tokens_per_second(ActivationDataModule(source, **data), model, args.d_sae, args.steps)
    cached_dm = CachedDataModule(args.cache, validate_with_model=False, **data)
    cached = tokens_per_second(cached_dm, None, args.d_sae, args.steps)
    live_dm = ActivationDataModule(source, **data)
    live_dm.set_model(model)
    live_data = stream_rate(live_dm, args.steps)
    cached_data = stream_rate(cached_dm, args.steps)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime: {load}")
    print(f"cache written (or found) in {written:.1f} s: {args.cache}")
    print(f"d_sae {args.d_sae}, batch {args.batch}, {args.steps - WARMUP} timed steps")
    print(f"live   {live:10.0f} tokens/s")
    print(f"cached {cached:10.0f} tokens/s  ({cached / live:.2f}x live)")
    print(f"data alone (stream, no SAE): live {live_data:.0f}, cached {cached_data:.0f} acts/s")


if __name__ == "__main__":
    main()
