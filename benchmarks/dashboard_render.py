"""Feature-page rendering throughput of the HTML dashboards (pages/s).

    python benchmarks/dashboard_render.py [REPORT] [--pages 1000] [--out DIR]

REPORT is a ``criteria.json`` or the report folder holding it (default: the newest under
``outputs/analysis``). Examples without per-token activations (reports written before the
dashboards) get synthetic ones of the right length, so every page renders the full
per-token highlighting. Times writing ``--pages`` feature pages (one process), then the
index; prints pages/s.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from sae_lightning.report.data import load_report
from sae_lightning.report.html import Dashboards, write_assets


def newest_report() -> Path:
    found = sorted(Path("outputs/analysis").glob("*/*/report/criteria.json"))
    if not found:
        raise SystemExit("no outputs/analysis/*/*/report/criteria.json: run analyze.py or pass one")
    return found[-1]


def add_synthetic_acts(report: dict) -> int:
    """Give every example window an ``acts`` list (as analyze(dashboards=true) writes)."""
    rng, n = random.Random(0), 0
    for per_feature in report["features"].values():
        top = per_feature.get("top_activations") or {}
        examples = list(top.get("top_examples") or [])
        for q in top.get("quantile_samples") or []:
            examples += q.get("examples") or []
        for e in examples:
            if "acts" not in e:
                e["acts"] = [round(rng.random() * e["activation"], 4) for _ in e["tokens"]]
                n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("report", nargs="?", help="criteria.json or its folder")
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--out", help="write here (default: a temporary folder)")
    args = parser.parse_args()
    path = Path(args.report) if args.report else newest_report()
    start = time.perf_counter()
    report = load_report(path)
    load_s = time.perf_counter() - start
    synthetic = add_synthetic_acts(report)
    features = [int(k) for k in report["features"]][: args.pages]
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="dashboards-"))
    dash = Dashboards(report, out)
    write_assets(out)
    start = time.perf_counter()
    dash.write_features(features)
    pages_s = time.perf_counter() - start
    start = time.perf_counter()
    dash.write_index()
    index_s = time.perf_counter() - start
    size = sum(p.stat().st_size for p in (out / "features").glob("*.html")) / len(features)
    print(f"report {path} ({len(report['features'])} features; load {load_s:.1f} s)")
    print(f"synthetic per-token activations added to {synthetic} example windows")
    print(f"cpus available: {len(os.sched_getaffinity(0))}")
    print(
        f"{len(features)} feature pages in {pages_s:.2f} s: {len(features) / pages_s:.0f} pages/s "
        f"(mean page {size / 1024:.0f} KiB)"
    )
    print(f"index.html ({len(report['features'])} rows) in {index_s:.2f} s -> {out}")


if __name__ == "__main__":
    main()
