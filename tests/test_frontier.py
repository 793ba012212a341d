"""Sweep summary and L0 / loss-recovered frontier (table, Pareto flags, escaped HTML page)."""

from __future__ import annotations

import json
from pathlib import Path

from sae_lightning.frontier import pareto
from sae_lightning.sweep import METRICS_FILE, summarize

JOBS = [  # (architecture, overrides, L0, loss recovered)
    ("standard", ["experiment=frontier/relu_l1_2"], 40.0, 0.80),
    ("standard", ["experiment=frontier/relu_l1_6"], 12.0, 0.60),
    ("topk", ["experiment=frontier/topk_k16"], 16.0, 0.75),
    ("topk", ["experiment=frontier/topk_k64", "note=</script><b>x&y</b>"], 64.0, 0.85),
    ("jumprelu", ["experiment=frontier/jumprelu_t05"], 50.0, 0.70),  # dominated by relu_l1_2
]


def _sweep(tmp_path: Path) -> Path:
    for job, (arch, overrides, l0, recovered) in enumerate(JOBS):
        folder = tmp_path / str(job)
        folder.mkdir()
        record = {
            "metrics": {"val/l0": l0, "val/loss_recovered": recovered, "val/dead_fraction": 0.0},
            "overrides": [*overrides, "trainer.max_steps=300"],
            "architecture": arch,
        }
        (folder / METRICS_FILE).write_text(json.dumps(record))
    return tmp_path


def test_pareto_flags() -> None:
    rows = [{"val/l0": l0, "val/loss_recovered": r} for *_, l0, r in JOBS]
    assert pareto(rows) == [True, True, True, True, False]
    assert pareto([{"val/l0": 1.0}, {"val/l0": 2.0, "val/loss_recovered": 0.5}]) == [False, True]


def test_multirun_writes_frontier_table_and_page(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    rows = summarize(sweep)
    assert [r["architecture"] for r in rows] == [a for a, *_ in JOBS]
    assert "trainer.max_steps=300" not in rows[0]["overrides"]  # shared overrides dropped
    table = (sweep / "frontier.md").read_text().splitlines()
    assert table[0].startswith("| architecture | overrides | L0 | loss recovered |")
    body = [[c.strip() for c in line.strip("|").split(" | ")] for line in table[2:]]
    # sorted by architecture, then L0; the dominated JumpReLU run is not on the frontier
    assert [(r[0], r[2], r[6]) for r in body] == [
        ("jumprelu", "50.0000", ""),
        ("standard", "12.0000", "yes"),
        ("standard", "40.0000", "yes"),
        ("topk", "16.0000", "yes"),
        ("topk", "64.0000", "yes"),
    ]
    page = (sweep / "frontier.html").read_text()
    assert (sweep / "plotly.min.js").stat().st_size > 1_000_000  # the library, next to it
    assert '<script src="plotly.min.js"></script>' in page
    assert "http://" not in page and "https://" not in page  # nothing fetched
    assert "</script><b>" not in page and "<b>x&y</b>" not in page  # escaped everywhere
    assert "&lt;/script&gt;&lt;b&gt;x&amp;y&lt;/b&gt;" in page  # table cell
    assert "\\u003c/script\\u003e\\u003cb\\u003ex\\u0026y" in page  # plot data
    assert page.count("Plotly.newPlot") == 1 and '"name": "topk"' in page
