"""Throughput and memory of the analysis pass: every criterion versus the bare pass.

    python benchmarks/analysis_throughput.py [--tokens 200000 2000000] [--d-sae 4096]
        [--batch-size 16] [--device cpu|cuda] [--precision 32-true] [--sae PATH]
        [--repeats N]    (best of N runs per mode: other load only ever slows a run down)
        [--features N]   (analyse features 0..N-1 only; the whole analyze.py run, phase by
                          phase: benchmarks/analysis_phases.py)

For each token count it runs, each in a fresh process (so peak memory is that run's own),
the bare pass (frozen forward to ``blocks.0.mlp.hook_post`` + SAE encode, through the same
``AnalysisModule`` and ``trainer.validate``, no criteria) and the full pass with every
criterion of ``conf/criteria/`` except universality (it needs a second SAE). Reported:
the seconds of setup before the first batch (the criteria's first pass over
``proxy_contexts`` contexts), tokens/s of the streaming part (and "late/early": seconds
per batch over its last tenth divided by its first tenth, ~1 when the per-batch cost does
not grow with the tokens seen), the seconds spent after it (criteria results, second
passes such as ablations), tokens/s of the whole ``trainer.validate`` (all three), and
peak memory (process RSS; on CUDA also
``max_memory_allocated``). Memory that stays flat from 200k to 2M tokens is the point: the
criteria keep top-k buffers, fixed-bin histograms and running sums, never all activations.

The tokens come from the embedded corpus's train split (its val split is ~100k tokens);
when the split is shorter than asked, the whole split is used and the count says so. The
SAE is a ``ReLUSAE(1024, d_sae)`` with random unit-norm directions and encoder biases set so
that each feature fires on about ``--density`` of tokens, or ``--sae PATH``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
from train_throughput import sync

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.mlp.hook_post"
SKIP = {"universality"}


class PassTimer(L.Callback):
    """Wall time of the streaming batches and of everything after them (device synchronised)."""

    def __init__(self) -> None:
        self.start = self.stream_end = self.end = 0.0
        self.batch_ends: list[float] = []

    def _now(self, device: torch.device) -> float:
        sync(device)
        return time.perf_counter()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *args) -> None:
        if batch_idx == 0:
            self.start = self._now(pl_module.device)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *a) -> None:
        self.stream_end = self._now(pl_module.device)
        self.batch_ends.append(self.stream_end)

    def late_over_early(self) -> float:
        """Seconds per batch over the last tenth of the pass / over the first tenth (after the
        first batch): above 1 would mean the per-batch cost grows with the tokens seen."""
        ends = self.batch_ends
        tenth = max(1, len(ends) // 10)
        if len(ends) < 2 * tenth + 2:
            return float("nan")
        early = (ends[1 + tenth] - ends[1]) / tenth
        late = (ends[-1] - ends[-1 - tenth]) / tenth
        return late / early

    def on_validation_end(self, trainer, pl_module) -> None:
        self.end = self._now(pl_module.device)


def criteria_names() -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / "criteria").glob("*.yaml") if p.stem not in SKIP)


def make_criteria(names: list[str]) -> list:
    from hydra import compose, initialize_config_dir

    from sae_lightning.training import instantiate_dict

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=[f"criteria=[{','.join(names)}]"])
    return instantiate_dict(cfg.criteria)


@torch.inference_mode()
def calibrated_sae(model, contexts: torch.Tensor, d_sae: int, density: float):
    """Random unit-norm features whose bias makes each fire on ~``density`` of the tokens."""
    from sae_lightning.hooks import capture_activations
    from sae_lightning.saes import ReLUSAE

    torch.manual_seed(0)
    sae = ReLUSAE(1024, d_sae)
    acts = capture_activations(model, contexts[:16], HOOK)[:, 1:].flatten(0, 1)  # [n, d_in]
    sae.b_dec.copy_(acts.mean(0))
    pre = sae.encode_pre(acts)  # [n, d_sae]
    sae.b_enc.sub_(torch.quantile(pre, 1 - density, dim=0))
    return sae.eval()


def worker(args: argparse.Namespace) -> dict:
    """One pass in this process; returns its timings and peak memory."""
    from sae_lightning.analysis.criterion import AnalysisContext
    from sae_lightning.analysis.loading import check_compatible, load_sae
    from sae_lightning.analysis.module import AnalysisModule
    from sae_lightning.analysis.results import AnalysisResults
    from sae_lightning.analysis.run import vocab_strings
    from sae_lightning.data.sources import CorpusSource
    from sae_lightning.models import load_embedded

    model = load_embedded()
    n_ctx = model.cfg.n_ctx
    contexts = CorpusSource("stdlib").contexts("train", model.tokenizer, n_ctx)
    contexts = contexts[: math.ceil(args.worker_tokens / n_ctx)]
    if args.sae:
        sae, meta = load_sae(args.sae)
        check_compatible(sae, meta, model, HOOK)
    else:
        sae = calibrated_sae(model, contexts, args.d_sae[0], args.density)
    features = list(range(min(args.features or sae.d_sae, sae.d_sae)))
    ctx = AnalysisContext(sae, model, HOOK, features, vocab_strings(model), contexts)
    criteria = make_criteria(criteria_names()) if args.mode == "full" else []
    timer = PassTimer()
    results = AnalysisResults(features, {})
    module = AnalysisModule(sae, model, ctx, results, batch_size=args.batch_size)
    trainer = L.Trainer(
        accelerator=args.device,
        devices=1,
        precision=args.precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[*criteria, timer],  # the timer last: its batch end follows the criteria's
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    begin = time.perf_counter()
    trainer.validate(module, verbose=False)  # setup (first pass), stream, results
    total = time.perf_counter() - begin
    cuda = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    return {
        "mode": args.mode,
        "tokens": contexts.numel(),
        "setup_s": timer.start - begin,
        "stream_s": timer.stream_end - timer.start,
        "after_s": timer.end - timer.stream_end,
        "total_s": total,
        "late_over_early": timer.late_over_early(),
        "rss_before_mb": rss_before,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_peak_mb": cuda,
        "criteria": [c.name for c in criteria],
    }


def _total(run: dict) -> float:
    return run["total_s"]


def spawn(args: argparse.Namespace, tokens: int, mode: str) -> dict:
    argv = [sys.executable, __file__, "--worker-tokens", str(tokens), "--mode", mode]
    argv += ["--d-sae", str(args.d_sae[0]), "--batch-size", str(args.batch_size)]
    argv += ["--device", args.device, "--precision", args.precision]
    argv += ["--density", str(args.density)] + (["--sae", args.sae] if args.sae else [])
    argv += ["--features", str(args.features)] if args.features else []
    # the repository on the path: plugins/ (and an uninstalled sae_lightning) import from it
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"worker {mode} {tokens} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[200_000, 2_000_000])
    parser.add_argument("--d-sae", type=int, nargs=1, default=[4096])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--sae", default=None)
    parser.add_argument("--features", type=int, default=None, help="analyse 0..N-1 (default all)")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs per mode")
    parser.add_argument("--mode", choices=["bare", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-tokens", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.WARNING)
    if args.worker_tokens:
        print(json.dumps(worker(args)))
        return
    shown = f" features=0..{args.features - 1}" if args.features else ""
    print(f"device={args.device} precision={args.precision} d_sae={args.d_sae[0]}{shown}")
    print(f"hook={HOOK}")
    print(f"full pass criteria: {', '.join(criteria_names())}")
    head = ("mode", "tokens", "setup s", "stream tok/s", "late/early", "after s", "total tok/s")
    print(
        "{:>5} {:>8} {:>8} {:>13} {:>10} {:>8} {:>12} {:>8} {:>12} {:>13}".format(
            *head, "RSS MB", "peak RSS MB", "CUDA peak MB"
        )
    )
    peaks = {}
    for tokens in args.tokens:
        stream, total = {}, {}
        for mode in ("bare", "full"):
            # best of --repeats by total time: other work on the machine only slows a run down
            r = min((spawn(args, tokens, mode) for _ in range(args.repeats)), key=_total)
            stream[mode] = r["tokens"] / r["stream_s"]
            total[mode] = r["tokens"] / r["total_s"]  # setup + stream + results, all of it
            peaks[mode, tokens] = r["peak_rss_mb"]
            cuda = "-" if r["cuda_peak_mb"] is None else f"{r['cuda_peak_mb']:.0f}"
            print(
                f"{mode:>5} {r['tokens']:>8} {r['setup_s']:>8.1f} {stream[mode]:>13.0f} "
                f"{r['late_over_early']:>10.2f} {r['after_s']:>8.1f} {total[mode]:>12.0f} "
                f"{r['rss_before_mb']:>8.0f} "
                f"{r['peak_rss_mb']:>12.0f} {cuda:>13}"
            )
        print(
            f"      full / bare: streaming rate {stream['full'] / stream['bare']:.3f}, "
            f"whole pass (setup + stream + results) {total['full'] / total['bare']:.3f}"
        )
    if len(args.tokens) > 1:
        lo, hi = min(args.tokens), max(args.tokens)
        growth = peaks["full", hi] / peaks["full", lo] - 1
        print(f"      full pass peak RSS at {hi} vs {lo} tokens: {growth:+.1%}")


if __name__ == "__main__":
    main()
