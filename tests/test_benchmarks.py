"""Every benchmark command README.md shows runs end to end, at the smallest sizes that still
take its real code path, and prints the table it promises with finite, positive figures.

Each benchmark runs as ``python benchmarks/<name>.py ...`` from the repository root on one
thread. Nothing here asserts a timing: only that the figures are there, parse, are finite and
positive, and agree with what the run did (contexts read, weights equal, evaluations made).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_hf_models import _analyse
from test_train import fast_run, small_corpus  # noqa: F401

from sae_lightning.cpu_bf16 import cpu_flags, native_bf16

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
NUMBER = r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?|nan|inf"


def bench(name: str, *args: object, timeout: float = 300) -> list[str]:
    """The stdout lines of ``python benchmarks/<name>.py args`` (exit code 0 asserted)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, f"benchmarks/{name}.py", *map(str, args)]
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stderr[-4000:]}"
    return done.stdout.splitlines()


def numbers(text: str) -> list[float]:
    """Every number in ``text`` (thousands separators allowed)."""
    return [float(n.replace(",", "")) for n in re.findall(NUMBER, text)]


def positive(*values: float) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


def line(lines: list[str], start: str) -> str:
    """The one line that starts with ``start`` (after leading blanks)."""
    found = [s for s in lines if s.strip().startswith(start)]
    assert len(found) == 1, f"{len(found)} lines start with {start!r} in:\n" + "\n".join(lines)
    return found[0]


def test_stream_memory():
    out = bench("stream_memory", "--sizes", 2000, 20000, "--n-ctx", 32)
    assert "contexts" in line(out, "streaming ") and "peak RSS" in line(out, "streaming ")
    rows = [s.split() for s in out if re.match(r"\s*(True|False)\s+\d", s)]
    assert [(r[0], r[1]) for r in rows] == [
        ("True", "2,000"), ("True", "20,000"), ("False", "2,000"), ("False", "20,000")
    ]  # fmt: skip
    contexts = {(r[0], r[1]): int(r[2].replace(",", "")) for r in rows}
    for size in ("2,000", "20,000"):  # streamed or in memory, the same training contexts
        assert contexts["True", size] == contexts["False", size]
        assert 0.5 < contexts["True", size] * 32 / float(size.replace(",", "")) <= 1
    for r in rows:
        before, peak, growth, seconds = numbers(" ".join(r[3:]))
        assert positive(before, peak) and peak >= before and seconds >= 0
    for streaming in ("True", "False"):
        ratio = numbers(line(out, f"streaming={streaming}: peak RSS").split("=")[-1])
        assert positive(*ratio) and len(ratio) == 1


def test_multi_sae():
    out = bench("multi_sae", "--n", 2, "--d-sae", 64, "--batch", 64, "--steps", 4)
    assert out[0].startswith("2 ReLU SAEs d_sae 64, batch 64, 4 steps, 32-true on cpu")
    assert positive(*numbers(line(out, "one process, 2 SAEs:"))[1:])
    for coeff in (1, 2):  # each solo run trains the multi run's SAE, bit for bit
        solo = line(out, f"separate run l1_coeff={coeff}:")
        assert solo.endswith("same weights: True")
        assert positive(*numbers(solo.split(":", 1)[1].split("same")[0]))
    ratio = numbers(line(out, "ratio separate / one process:").split(":")[1])
    assert len(ratio) == 2 and positive(*ratio)


def test_matryoshka_prefix():
    out = bench(
        "matryoshka_prefix", "--d-sae", 32, "--groups", "8,8,16", "--k", 4,
        "--steps", 4, "--batch", 64, "--val-contexts", 2,
    )  # fmt: skip
    assert numbers(line(out, "256 training and"))[0] == 256  # steps x batch activations
    assert re.fullmatch(r"\s*L0\s+MSE\s+FVU", line(out, "L0"))
    labels = ["matryoshka first prefix (8)", "batchtopk alone (8, k 4)",
              "matryoshka full (32, k 4)", "batchtopk full (32, k 4)"]  # fmt: skip
    scores = {}
    for label in labels:
        scores[label] = numbers(line(out, label)[len(label) :])
        assert len(scores[label]) == 3 and positive(*scores[label])
    k0 = max(1, round(scores[labels[0]][0]))  # the L0-matched baseline: k = the prefix's L0
    matched = f"batchtopk alone (8, k {k0})"
    assert len(numbers(line(out, matched)[len(matched) :])) == 3
    versus = [s.split(":") for s in out if s.startswith("first prefix FVU / ")]
    assert {v[0] for v in versus} == {f"first prefix FVU / {b} FVU" for b in (labels[1], matched)}
    assert all(positive(*numbers(v[1])) for v in versus)
    assert positive(*numbers(line(out, "matryoshka full FVU / batchtopk full FVU:").split(":")[1]))


@pytest.fixture(scope="module")
def analysed_run(tmp_path_factory, fast_run, small_corpus):  # noqa: F811
    """A debug=fast training run (test_train) and its analysis (8 features, 4 criteria)."""
    run, _ = fast_run
    tmp = tmp_path_factory.mktemp("bench")
    report = _analyse(tmp, run, small_corpus)
    assert len(report["features"]) == 8
    return run, tmp / "analysis" / "report"


def test_dashboard_render(analysed_run, tmp_path):
    _, report = analysed_run
    out = bench("dashboard_render", report, "--pages", 4, "--out", tmp_path)
    assert line(out, "report ").startswith(f"report {report} (8 features;")
    assert line(out, "synthetic per-token activations added to")
    pages = re.fullmatch(
        rf"4 feature pages in ({NUMBER}) s: ({NUMBER}) pages/s \(mean page ({NUMBER}) KiB\)",
        line(out, "4 feature pages in"),
    )
    assert pages and positive(*map(float, pages.groups()[1:]))
    assert len(list((tmp_path / "features").glob("*.html"))) == 4
    assert line(out, "index.html (8 rows) in") and (tmp_path / "index.html").is_file()


def test_evidence_overhead():
    out = bench("evidence_overhead", "--steps", 20, "--every", 10, "debug=fast")
    assert line(out, "overrides:").endswith("debug=fast")
    assert positive(*numbers(line(out, "baseline training")))
    evidence = line(out, "with feature_evidence")
    assert "(2 evals, one per 10 steps)" in evidence  # 20 steps, one evaluation each 10
    assert positive(numbers(evidence)[0])
    assert math.isfinite(numbers(line(out, "overhead (ratio - 1)"))[1])
    assert positive(*numbers(line(out, "fit loop alone"))[:2])
    assert positive(*numbers(line(out, "evaluations' own CPU")))


def test_train_throughput():
    out = bench(
        "train_throughput", "--arch", "relu", "topk", "--d-sae", 64, "--precision", "32-true",
        "bf16-mixed", "--batch", 64, "--buffer", 256, "--l0", 4, "--k", 4, "--emulated-bf16",
    )  # fmt: skip
    # the cache of the cached rows is written first, then the table (two refill cycles timed)
    assert line(out, "device=") == "device=cpu batch=64 d_in=1024 steps=4"
    assert line(out, "arch").split() == [
        "arch", "precision", "data", "d_sae", "L0", "train", "tok/s", "mm", "GFLOP/s",
        "ceiling", "tok/s", "fraction",
    ]  # fmt: skip
    rows = [s.split() for s in out if s.startswith(("relu ", "topk "))]
    assert [r[:4] for r in rows] == [
        [a, p, d, "64"]
        for p in ("32-true", "bf16-mixed")
        for a in ("relu", "topk")
        for d in ("live", "cached")
    ]
    for row in rows:
        l0, rate, mm, ceiling, fraction = numbers(" ".join(row[4:]))
        assert positive(l0, rate, mm, ceiling) and l0 <= 64
        assert fraction == pytest.approx(rate / ceiling, abs=0.006)
        if row[0] == "topk":
            assert l0 <= 4  # k latents a token at most
        else:  # the trained density: about --l0 of the 64 latents fire (not the 32 of init)
            assert l0 < 16


def test_train_throughput_skips_bf16_on_a_cpu_that_would_emulate_it():
    out = bench(
        "train_throughput", "--arch", "relu", "--d-sae", 64, "--precision", "32-true",
        "bf16-mixed", "--batch", 64, "--buffer", 128, "--l0", 4, "--data", "cached",
    )  # fmt: skip
    rows = [s.split()[:3] for s in out if s.startswith("relu ")]
    if native_bf16(cpu_flags()) is False:  # this machine (an AVX2 EPYC, say)
        assert line(out, "bf16-mixed skipped").startswith(
            "bf16-mixed skipped: this CPU has no bf16 arithmetic (none of avx512_bf16, "
        )
        assert rows == [["relu", "32-true", "cached"]]
        # bf16 alone: the skip line and nothing else (no model, cache or table)
        alone = bench(
            "train_throughput", "--precision", "bf16-mixed", "--batch", 64, "--buffer", 128
        )
        assert len(alone) == 1 and alone[0].startswith("bf16-mixed skipped: ")
    else:  # bf16 in hardware, or flags unknown: both rows run
        assert not [s for s in out if "skipped" in s]
        assert rows == [["relu", "32-true", "cached"], ["relu", "bf16-mixed", "cached"]]


def test_forward_groups():
    out = bench("forward_groups", "--contexts", 16, 32, "--rounds", 1)
    assert out[0] == "contexts=256 n_ctx=128 hook=blocks.0.mlp.hook_post rounds=1"
    assert line(out, "contexts_per_forward").split() == [
        "contexts_per_forward",
        "tokens/s",
        "vs",
        "32",
    ]
    (k16, rate16, ratio16), (k32, rate32, ratio32) = [numbers(s) for s in out[2:]]
    assert (k16, k32, ratio32) == (16, 32, 1.0)
    assert positive(rate16, rate32) and ratio16 == pytest.approx(rate16 / rate32, abs=0.006)


def test_stream_shuffle():
    out = bench("stream_shuffle", "--tokens", 4096, "--d-in", 64, "--rounds", 2)
    assert out[0] == "tokens=4096 d_in=64 rounds=2"
    index, select = numbers(line(out, "buffer[perm]"))[0], numbers(line(out, "buffer.index"))[1]
    assert positive(index, select)
    assert numbers(line(out, "speed-up"))[0] == pytest.approx(index / select, abs=0.01)


def test_train_throughput_refuses_a_buffer_smaller_than_a_batch():
    argv = [sys.executable, "benchmarks/train_throughput.py", "--batch", "64", "--buffer", "32"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "--buffer 32 must hold at least one batch (--batch 64)" in done.stderr


def test_auxk_step():
    out = bench("auxk_step", "--n-dead", 8, 128, "--k-aux", 16, "--batch", 32, "--steps", 1,
                "--rounds", 1)  # fmt: skip
    assert out[0].startswith("device=cpu d_in=1024 d_sae=256 k_aux=16 batch=32 steps=1 ")
    assert positive(*numbers(out[0].split("mm=")[1]))
    assert line(out, "n_dead").split() == [
        "n_dead", "density", "sparse", "tok/s", "dense", "tok/s", "dense/sparse"
    ]  # fmt: skip
    rows = [numbers(s) for s in out if re.match(r"\s*\d", s)]
    assert [r[0] for r in rows] == [8, 128]
    assert [r[1] for r in rows] == [1.0, 0.125]  # k_aux capped at the 8 dead latents
    for _, _, sparse, dense, ratio in rows:
        assert positive(sparse, dense)
        assert ratio == pytest.approx(dense / sparse, abs=0.006)


def test_denormal_adam():
    out = bench("denormal_adam", "--d-sae", 256, "--d-in", 64, "--dead", 0, 0.5, "--steps", 2,
                "--rounds", 1)  # fmt: skip
    assert out[0] == "d_sae=256 d_in=64 steps=2 rounds=1 threads=1"
    assert line(out, "dead").split() == [
        "dead", "no", "flush", "ms", "flush", "ms", "speed-up", "denormals", "left"
    ]  # fmt: skip
    rows = [numbers(s) for s in out if re.match(r"\s*\d", s)]
    assert [r[0] for r in rows] == [0.0, 0.5]
    for dead, slow, fast, ratio, left_off, left_on in rows:
        assert positive(slow, fast, ratio)
        # without flushing half the rows' moments stay denormal (128 rows x 64), with it none
        assert (left_off, left_on) == (dead * 256 * 64, 0)


def test_topk_decoder():
    out = bench("topk_decoder", "--d-sae", 64, "--k", 4, "--batch", 64, "--steps", 1, "--rounds", 1)
    assert out[0].startswith("device=cpu d_in=1024 d_sae=64 k=4 batch=64 steps=1 rounds=1 mm=")
    mm, ceiling = numbers(out[0].split("mm=")[1])
    assert positive(mm, ceiling)
    assert line(out, "sparse tok/s").split() == [
        "sparse", "tok/s", "dense", "tok/s", "sparse/dense", "fraction"
    ]  # fmt: skip
    for label in ("SAE step", "full loop"):
        figures = numbers(line(out, label)[len(label) :])
        sparse, dense, ratio, fraction = figures
        assert positive(sparse, dense, ratio)
        assert ratio == pytest.approx(sparse / dense, abs=0.006)
        assert fraction == pytest.approx(sparse / ceiling, abs=0.006)


def test_sparse_step():
    archs = ["relu", "jumprelu", "gated", "topk"]
    out = bench(
        "sparse_step", "--arch", *archs, "--d-sae", 64, "--l0", 4, "--batch", 64, "--steps", 1,
        "--rounds", 1, "--precision", "32-true", "bf16-mixed", "--parts", "--profile",
    )  # fmt: skip
    ceilings = {}
    for precision in ("32-true", "bf16-mixed"):
        mm, ceilings[precision] = numbers(line(out, f"{precision}: mm=").split(":", 1)[1])
        assert positive(mm, ceilings[precision])
    assert "ratio" in line(out, "arch ") and "fraction" in line(out, "arch ")
    rows = [s.split() for s in out if s.split() and s.split()[0] in archs]
    assert [r[:2] for r in rows] == [[a, p] for a in archs for p in ("32-true", "bf16-mixed")]
    for _, precision, *figures in rows:
        l0, sparse, dense, ratio, fraction, *vs = numbers(" ".join(figures))
        assert positive(l0, sparse, dense, ratio, *vs) and l0 <= 64
        assert ratio == pytest.approx(sparse / dense, abs=0.006)
        assert fraction == pytest.approx(sparse / ceilings[precision], abs=0.006)
        if precision == "32-true":
            assert vs == [1.0, 1.0]  # the first precision over itself
    for part in ("grad projection", "renormalisation", "Adam foreach", "Adam fused"):
        assert positive(*numbers(line(out, part)[len(part) :]))
    profiles = [s for s in out if s.startswith("== profile ")]
    assert profiles == [f"== profile {a} {p} (two sparse steps) ==" for a in archs
                        for p in ("32-true", "bf16-mixed")]  # fmt: skip
    assert sum("Self CPU %" in s for s in out) == len(profiles)  # one table each


def test_analysis_throughput():
    out = bench(
        "analysis_throughput", "--tokens", 2048, 4096, "--d-sae", 64, "--batch-size", 4,
        "--features", 8,
    )  # fmt: skip
    assert out[0] == "device=cpu precision=32-true d_sae=64 features=0..7"
    criteria = line(out, "full pass criteria:").split(":")[1].replace(",", " ").split()
    assert {"top_activations", "specificity", "downstream"} <= set(criteria)
    assert "universality" not in criteria
    assert "stream tok/s" in line(out, "mode") and "peak RSS MB" in line(out, "mode")
    rows = [s.split() for s in out if re.match(r"\s*(bare|full)\s+\d", s)]
    assert [r[0] for r in rows] == ["bare", "full", "bare", "full"]
    for row, asked in zip(rows, (2048, 2048, 4096, 4096), strict=True):
        tokens, setup, stream, late, after, total, rss, peak = numbers(" ".join(row[1:9]))
        assert asked <= tokens < asked + 1024 and row[9] == "-"  # whole contexts; no CUDA
        assert positive(stream, total, rss, peak) and setup >= 0 and after >= 0
    for ratios in [s for s in out if "full / bare:" in s]:
        assert len(numbers(ratios)) == 2 and positive(*numbers(ratios))
    assert math.isfinite(numbers(line(out, "full pass peak RSS at 4096 vs 2048"))[-1])


def test_analysis_phases(analysed_run):
    run, _ = analysed_run
    out = bench("analysis_phases", "--sae", run / "sae", "--features", 4, "--tokens", 512)
    assert out[0] == f"analyze.py sae_path={run / 'sae'} tokens=512 features=[0..3]"
    assert "best of 1 by CPU time" in out[1]
    phases = ("imports", "load", "tokens", "select", "first pass", "stream", "results")
    for phase in (*phases, "windows", "dashboards", "other"):
        cells = line(out, phase)[11:].split()
        assert len(cells) == 2 and all(c == "-" or math.isfinite(float(c)) for c in cells)
    for phase in ("imports", "load", "stream", "total"):  # every run has these, and they cost
        wall, cpu = numbers(line(out, phase)[11:])
        assert positive(wall) and cpu >= 0


def test_hook_depth():
    out = bench(
        "hook_depth", "--layers", 2, "--d-model", 32, "--batch", 2, "--n-ctx", 16, "--repeats", 1
    )
    assert out[0].startswith("device=cpu threads=1 layers=2 d_model=32 batch=2x16")
    assert line(out, "hook").split() == ["hook", "seconds", "ratio"]
    full = numbers(line(out, "full forward")[len("full forward") :])
    assert positive(*full) and full[1] == 1.0
    for layer in range(2):
        hook = f"blocks.{layer}.hook_resid_post"
        figures = numbers(line(out, hook)[len(hook) :])
        assert len(figures) == 2 and positive(*figures)


def test_cache_throughput(small_corpus, tmp_path, request):  # noqa: F811
    cache = tmp_path / "cache"  # about 200 MB of float32 activations, removed at the end
    request.addfinalizer(lambda: shutil.rmtree(cache, ignore_errors=True))
    out = bench(
        "cache_throughput", "--d-sae", 64, "--batch", 64, "--steps", 4,
        "--corpus", small_corpus, "--val-fraction", 0.2, "--cache", cache,
    )  # fmt: skip
    assert line(out, "uptime:")
    written = line(out, "cache written (or found) in")
    assert written.endswith(f"s: {cache}") and any(cache.glob("*.safetensors"))
    assert line(out, "d_sae") == "d_sae 64, batch 64, 2 timed steps"  # 4 steps, 2 warm-up
    live = numbers(line(out, "live "))
    cached = re.fullmatch(
        rf"cached\s+({NUMBER}) tokens/s  \(({NUMBER})x live\)", line(out, "cached ")
    )
    assert len(live) == 1 and cached and positive(*live, *map(float, cached.groups()))
    ratio = float(cached.group(1)) / live[0]
    assert float(cached.group(2)) == pytest.approx(ratio, abs=0.006)
    stream = line(out, "data alone (stream, no SAE):")
    assert len(numbers(stream)) == 2 and positive(*numbers(stream))
