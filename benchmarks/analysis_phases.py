"""Where an ``analyze.py`` run spends its time, phase by phase (wall and CPU seconds).

    python benchmarks/analysis_phases.py --sae PATH [--features 256] [--tokens 25000]
        [--repo DIR ...] [--repeats N] [--profile DIR]

Runs the real command line, ``analyze.py sae_path=PATH tokens=T features=[0..N-1]`` (every
default criterion, dashboards on), each run in a fresh process started in ``--repo`` (default:
this checkout; give several, e.g. an unchanged copy made with ``git archive``, to compare
code versions back to back). The worker wraps the functions of ``sae_lightning.analysis.run``
with timers, so the table splits a run into: imports (what ``analyze.py`` imports),
load (SAE + frozen model), tokens, select, first pass (the criteria's ``setup``: the proxy
pass), stream (the ``trainer.validate`` batches), results (criteria results, ablations),
windows (per-token activations of the examples), dashboards (HTML pages) and other (Hydra
composition, criteria construction, JSON, scorecard, TensorBoard). A phase a version does not
have shows "-". With ``--repeats N`` each version runs N times, alternating, and the run
with the least CPU time is kept: on a shared machine other load stretches wall time far
more than CPU time, so compare CPU seconds, and versions measured in the same session.
``--profile DIR`` also writes a cProfile (CPU clock) of each version's last run,
``DIR/<i>.prof`` (``i``: the version's place in ``--repo``; its times include the profiler).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (phase, attribute of sae_lightning.analysis.run) timed around every call
RUN_PHASES = (
    ("load", "_load"),
    ("tokens", "load_contexts"),
    ("select", "select_features"),
    ("windows", "add_window_activations"),
    ("dashboards", "_write_dashboards"),
)
ENTRY_IMPORTS = (
    "hydra",
    "sae_lightning.analysis.run",
    "sae_lightning.cli",
    "sae_lightning.console",
)
"""The modules analyze.py imports (timed as "imports")."""
ORDER = ("imports", "load", "tokens", "select", "first pass", "stream", "results")
ORDER += ("windows", "dashboards", "other", "total")


def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its finished children (a pool of
    page writers, say)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class Clock:
    """Wall and CPU seconds summed per phase."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def add(self, phase: str, wall: float, cpu: float) -> None:
        self.wall[phase] = self.wall.get(phase, 0.0) + wall
        self.cpu[phase] = self.cpu.get(phase, 0.0) + cpu

    def wrap(self, phase: str, fn):
        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), cpu_seconds()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(phase, time.perf_counter() - wall, cpu_seconds() - cpu)

        return timed


def instrument(clock: Clock) -> None:
    """Timers around the analysis' phases (those this version of the code has)."""
    from lightning import Trainer

    from sae_lightning.analysis import run
    from sae_lightning.analysis.criterion import Criterion
    from sae_lightning.analysis.module import AnalysisModule

    for phase, name in RUN_PHASES:
        if hasattr(run, name):
            setattr(run, name, clock.wrap(phase, getattr(run, name)))
    Trainer.validate = clock.wrap("validate", Trainer.validate)
    Criterion.setup = clock.wrap("first pass", Criterion.setup)
    end = AnalysisModule.on_validation_epoch_end
    AnalysisModule.on_validation_epoch_end = clock.wrap("results", end)


def worker(args: argparse.Namespace) -> dict:
    """One ``analyze.py`` run in this process (started in the repository under test)."""
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    sys.path.insert(0, os.getcwd())
    for module in ENTRY_IMPORTS:  # what analyze.py imports, so its run starts warm
        importlib.import_module(module)
    clock = Clock()
    clock.add("imports", time.perf_counter() - wall0, cpu_seconds() - cpu0)
    instrument(clock)
    features = ",".join(str(i) for i in range(args.features))
    sys.argv = ["analyze.py", f"sae_path={args.sae}", f"tokens={args.tokens}"]
    sys.argv += [f"features=[{features}]", f"hydra.run.dir={args.out}"]
    profile = None
    if args.profile_to:
        import cProfile

        profile = cProfile.Profile(time.process_time)
        profile.enable()
    try:  # as ``python analyze.py``: Hydra finds conf/ next to the file
        runpy.run_path("analyze.py", run_name="__main__")
    except SystemExit as done:
        if done.code not in (0, None):
            raise
    if profile is not None:
        profile.disable()
        profile.dump_stats(args.profile_to)
    clock.add("total", time.perf_counter() - wall0, cpu_seconds() - cpu0)
    for times in (clock.wall, clock.cpu):
        validate = times.pop("validate", 0.0)
        times["stream"] = validate - times.get("first pass", 0.0) - times.get("results", 0.0)
        named = sum(v for k, v in times.items() if k != "total")
        times["other"] = times["total"] - named
    return {"wall": clock.wall, "cpu": clock.cpu}


def spawn(args: argparse.Namespace, repo: Path, profile_to: str | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="analysis-phases-") as out:
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "--sae", args.sae]
        argv += ["--features", str(args.features), "--tokens", str(args.tokens), "--out", out]
        argv += ["--profile-to", profile_to] if profile_to else []
        # the repository under test first on the path: its sae_lightning and plugins/
        path = os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path}
        done = subprocess.run(argv, cwd=repo, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"analyze.py in {repo} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(runs: dict[str, dict]) -> str:
    names = list(runs)
    head = f"{'phase':<11}" + "".join(f"{n[-24:]:>26}" for n in names)
    lines = [head, f"{'':<11}" + "".join(f"{'wall s':>14}{'CPU s':>12}" for _ in names)]
    for phase in ORDER:
        cells = ""
        for name in names:
            wall, cpu = runs[name]["wall"].get(phase), runs[name]["cpu"].get(phase)
            cells += f"{'-':>14}{'-':>12}" if wall is None else f"{wall:>14.1f}{cpu:>12.1f}"
        lines.append(f"{phase:<11}{cells}")
    if len(names) > 1:
        first, last = runs[names[0]], runs[names[-1]]
        ratio = last["cpu"]["total"] / first["cpu"]["total"]
        wall = last["wall"]["total"] / first["wall"]["total"]
        lines.append(f"total {names[-1]} / {names[0]}: CPU {ratio:.2f}, wall {wall:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", required=True, help="an SAE analyze.py can load (sae_path=)")
    parser.add_argument("--features", type=int, default=256, help="analyse features 0..N-1")
    parser.add_argument("--tokens", type=int, default=25_000)
    parser.add_argument("--repo", action="append", help="checkout(s) to time (default: this)")
    parser.add_argument("--repeats", type=int, default=1, help="keep the least CPU of N runs")
    parser.add_argument("--profile", help="cProfile each version into DIR")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.features < 1 or args.tokens < 1 or args.repeats < 1:
        parser.error("--features, --tokens and --repeats must be positive")
    if args.worker:
        print(json.dumps(worker(args)))
        return
    repos = [Path(r).resolve() for r in args.repo or [ROOT]]
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for i, repo in enumerate(repos):  # alternate versions: both see the same load
            prof = str(Path(args.profile) / f"{i}.prof") if args.profile else None
            run = spawn(args, repo, prof)
            key = str(repo)
            if key not in best or run["cpu"]["total"] < best[key]["cpu"]["total"]:
                best[key] = run
    print(f"analyze.py sae_path={args.sae} tokens={args.tokens} features=[0..{args.features - 1}]")
    print(f"cpus available: {len(os.sched_getaffinity(0))}; best of {args.repeats} by CPU time")
    print(table(best))


if __name__ == "__main__":
    main()
