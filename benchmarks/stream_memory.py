"""Peak memory of reading a text dataset through ``HFDatasetSource``, streamed or in memory.

    python benchmarks/stream_memory.py [--sizes 200000 2000000] [--n-ctx 128]

A first process writes a local jsonl of the Python standard library's .py files (cut at line
ends into rows of at most 20,000 characters, like the documents of a text dataset, repeated
until it holds the largest size in tokens of the embedded tokenizer). Then, for each
``max_tokens`` size and ``streaming`` true / false, a fresh process opens the source and
reads every training context the way the activation stream does (groups of 32 contexts):
streamed through :class:`~sae_lightning.data.readers.StreamGroups`, or from the in-memory
tensor. Each reports its peak RSS (``resource.getrusage`` ``ru_maxrss``) and its RSS before
reading (imports, tokenizer, model). With streaming the peak should not grow with
``max_tokens``; in memory it grows with the contexts it holds.

This parent process imports nothing heavy: Linux carries ``ru_maxrss`` across ``fork`` and
``exec``, so a child of a large parent would report the parent's peak as its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

GROUP = 32  # contexts per frozen forward (the default contexts_per_forward)


def rss_mb() -> float:
    """Current resident set size, from /proc (MiB)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def write_jsonl(path: Path, tokens: int, max_chars: int = 20_000) -> None:
    """Rows of stdlib source until they hold ``tokens`` tokens; prints the rows written."""
    from sae_lightning.models import load_embedded

    tokenizer = load_embedded().tokenizer
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    total, rows = 0, 0
    with path.open("w") as out:
        while total < tokens:
            for file in files:
                lines, texts = file.read_text(errors="replace").splitlines(keepends=True), [""]
                for line in lines:
                    if len(texts[-1]) + len(line) > max_chars:
                        texts.append("")
                    texts[-1] += line
                for text in texts:
                    out.write(json.dumps({"text": text}) + "\n")
                ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
                total, rows = total + sum(len(i) + 1 for i in ids), rows + len(texts)
                if total >= tokens:
                    break
    print(rows)


def child(path: str, max_tokens: int, streaming: bool, n_ctx: int) -> None:
    """Read every training context; print one JSON line of figures."""
    from sae_lightning.data.hf import HFDatasetSource
    from sae_lightning.data.readers import RowGroups
    from sae_lightning.models import load_embedded

    model = load_embedded()
    before = rss_mb()
    start = time.perf_counter()
    source = HFDatasetSource(path, max_tokens=max_tokens, streaming=streaming)
    train = source.reader("train", model.tokenizer, n_ctx, int(model.cfg.d_vocab))
    if streaming:
        groups = train.groups(0, 1, GROUP)
    else:
        import torch

        groups = RowGroups(train, torch.randperm(len(train)), GROUP)
    contexts, g = 0, 0
    while groups.has(g):
        contexts += len(groups.read(g))
        g += 1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    seconds = time.perf_counter() - start
    print(json.dumps(dict(contexts=contexts, before=before, peak=peak, seconds=seconds)))


def run(path: Path, max_tokens: int, streaming: bool, n_ctx: int, cache: str) -> dict:
    env = {**os.environ, "HF_DATASETS_CACHE": cache, "HF_DATASETS_OFFLINE": "1"}
    args = [sys.executable, __file__, "--child", str(path), str(max_tokens), str(streaming)]
    done = subprocess.run(
        [*args, "--n-ctx", str(n_ctx)], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 2_000_000])
    parser.add_argument("--n-ctx", type=int, default=128)
    parser.add_argument("--child", nargs=3, metavar=("PATH", "MAX_TOKENS", "STREAMING"))
    parser.add_argument("--write", nargs=2, metavar=("PATH", "TOKENS"))
    args = parser.parse_args()
    if args.child:
        path, max_tokens, streaming = args.child
        child(path, int(max_tokens), streaming == "True", args.n_ctx)
        return
    if args.write:
        write_jsonl(Path(args.write[0]), int(args.write[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stdlib.jsonl"
        writer = [sys.executable, __file__, "--write", str(path), str(max(args.sizes))]
        done = subprocess.run(writer, capture_output=True, text=True, check=True)
        rows = int(done.stdout.strip().splitlines()[-1])
        mib = path.stat().st_size / 2**20
        print(f"{path.name}: {rows} rows, {mib:.1f} MiB, >= {max(args.sizes):,} tokens")
        print(
            f"{'streaming':>9} {'max_tokens':>11} {'contexts':>9} {'RSS before':>11} "
            f"{'peak RSS':>9} {'growth':>8} {'seconds':>8}"
        )
        peaks: dict[bool, list[float]] = {True: [], False: []}
        for streaming in (True, False):
            for size in args.sizes:
                r = run(path, size, streaming, args.n_ctx, str(Path(tmp) / "cache"))
                peaks[streaming].append(r["peak"])
                print(
                    f"{streaming!s:>9} {size:>11,} {r['contexts']:>9,} {r['before']:>8.0f} MiB "
                    f"{r['peak']:>5.0f} MiB {r['peak'] - r['before']:>4.0f} MiB "
                    f"{r['seconds']:>8.1f}"
                )
        for streaming, values in peaks.items():
            print(
                f"streaming={streaming}: peak RSS at {args.sizes[-1]:,} / at {args.sizes[0]:,} "
                f"tokens = {values[-1] / values[0]:.2f}"
            )


if __name__ == "__main__":
    main()
