"""Where an analysis writes: one analysis per report_dir, a report replaced whole, only a
report replaced, re-rendering never through a symlink; options and SAE files refused early."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from test_analysis_core import (  # noqa: F401
    META,
    ROOT,
    analysis_cfg,
    criteria_dir,
    random_sae,
    tiny_corpus,
)

import sae_lightning.analysis.run as run
from sae_lightning.analysis.folders import ReportFolderError
from sae_lightning.analysis.loading import load_sae
from sae_lightning.formats import save_saelens
from sae_lightning.report import write_dashboards
from sae_lightning.report.__main__ import main as rerender
from sae_lightning.report.files import ReportFiles, UnsafeReportPath

LINK = re.compile(r'href="(?:\.\./)?(?:features/)?(\d+)\.html"')


@pytest.fixture(scope="module")
def saes(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("saes")
    save_saelens(random_sae(1024, 64, seed=0), folder / "a", META)
    save_saelens(random_sae(1024, 64, seed=1), folder / "b", META)
    return folder / "a", folder / "b"


@pytest.fixture(scope="module")
def inputs(tiny_corpus, criteria_dir) -> tuple[Path, Path]:  # noqa: F811
    """The corpus folder and the search-path folder of test_analysis_core's criterion."""
    return tiny_corpus, criteria_dir


def config(out: Path, sae: Path, inputs: tuple[Path, Path], *overrides: str):
    return analysis_cfg(out, sae, *inputs, *overrides)


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load the SAE or the model fails the test."""

    def refuse(cfg):
        raise AssertionError("the SAE and the model were loaded")

    monkeypatch.setattr(run, "_load", refuse)


def assert_one_report(out: Path, source: Path, features: list[int], other: Path) -> None:
    """``out/report`` is exactly the report of ``source`` on ``features``: criteria.json,
    the page set, every page's links and its SAE line; nothing of ``other``; no leftovers."""
    report = out / "report"
    data = json.loads((report / "criteria.json").read_text())
    assert data["metadata"]["source"] == str(source)
    assert [int(f) for f in data["features"]] == features
    assert sorted(int(p.stem) for p in (report / "features").iterdir()) == sorted(features)
    index = (report / "index.html").read_text()
    assert {int(i) for i in LINK.findall(index)} == set(features)
    for page in [report / "index.html", *(report / "features").iterdir()]:
        html = page.read_text()
        assert str(source) in html and str(other) not in html, page
        assert {int(i) for i in LINK.findall(html)} <= set(features), page
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".report-")) == []


def test_two_concurrent_analyses_never_mix(tmp_path, saes, inputs):
    """Two analyze.py processes into one report_dir at once: one is refused at the start
    (naming the other's pid), or both finish; the report is one SAE's, whole."""
    out, jobs = tmp_path / "shared", {}
    for name, sae, features in (("a", saes[0], "[1,2,3]"), ("b", saes[1], "[5,6]")):
        cmd = [
            sys.executable, "analyze.py", f"sae_path={sae}", f"report_dir={out}",
            f"features={features}", "criteria=[]", "tokens=512", "data.split=train",
            f"data.source.corpus={inputs[0]}", f"hydra.run.dir={tmp_path / name}",
            "+trainer.enable_progress_bar=false",
        ]  # fmt: skip
        jobs[name] = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    errors = {name: job.communicate(timeout=300)[1] for name, job in jobs.items()}
    codes = {name: job.returncode for name, job in jobs.items()}
    assert sorted(codes.values()) in ([0, 0], [0, 1]), errors
    written = json.loads((out / "report" / "criteria.json").read_text())["metadata"]["source"]
    winner = "a" if written == str(saes[0]) else "b"
    loser = "b" if winner == "a" else "a"
    if codes[loser] == 1:
        last = errors[loser].strip().splitlines()[-1]
        assert last == (
            f"analyze.py: ReportFolderError: report_dir {out} is being written by another "
            f"analysis (pid {jobs[winner].pid}); wait for it to finish or choose another "
            "report_dir"
        )
        assert "Traceback" not in errors[loser]
    source, other = (saes[0], saes[1]) if winner == "a" else (saes[1], saes[0])
    assert_one_report(out, source, [1, 2, 3] if winner == "a" else [5, 6], other)


def test_a_claimed_report_dir_is_refused_before_loading(tmp_path, saes, inputs, no_loading):
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / ".analysis.lock", os.O_RDWR | os.O_CREAT)  # as another analysis holds it
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"4242\n")
    try:
        with pytest.raises(ReportFolderError) as refused:
            run.analyze(config(out, saes[0], inputs))
    finally:
        os.close(fd)
    assert str(refused.value) == (
        f"report_dir {out} is being written by another analysis (pid 4242); wait for it to "
        "finish or choose another report_dir"
    )
    assert sorted(p.name for p in out.iterdir()) == [".analysis.lock"]


def test_a_rerun_replaces_the_report_whole(tmp_path, saes, inputs, monkeypatch):
    out = tmp_path / "out"
    run.analyze(config(out, saes[0], inputs, "features=[1,2,3]", "criteria=[]"))
    first = set((out / "tensorboard").glob("*tfevents*"))
    run.analyze(config(out, saes[1], inputs, "features=[4]", "criteria=[]"))
    assert_one_report(out, saes[1], [4], saes[0])  # no stale pages 1, 2, 3
    events = set((out / "tensorboard").glob("*tfevents*"))
    assert first and events and not first & events  # the first run's events are gone
    assert all(p.name.endswith(".analysis") for p in events)

    def fail(cfg):
        raise RuntimeError("the pass failed")

    monkeypatch.setattr(run, "_load", fail)  # a run that fails half-way ...
    with pytest.raises(RuntimeError, match="the pass failed"):
        run.analyze(config(out, saes[0], inputs, "features=[9]"))
    assert_one_report(out, saes[1], [4], saes[0])  # ... leaves the earlier report as it was
    assert set((out / "tensorboard").glob("*tfevents*")) == events


@pytest.mark.parametrize("kind", ["other files", "a file", "a symlink", "a report itself"])
def test_a_folder_that_is_no_report_is_refused_and_untouched(
    tmp_path, saes, inputs, no_loading, kind
):
    out, outside = tmp_path / "mine", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("outside")
    if kind == "other files":
        (out / "report").mkdir()
        (out / "report" / "notes.txt").write_text("my notes")
        (out / "report" / "data").mkdir()
        message = f"{out / 'report'} holds data/, notes.txt but no criteria.json"
    elif kind == "a file":
        (out / "report").write_text("my notes")
        message = f"{out / 'report'} is a file, not an earlier report folder"
    elif kind == "a symlink":
        (out / "report").symlink_to(outside)
        message = f"{out / 'report'} is a symlink, not an earlier report folder"
    else:
        (out / "criteria.json").write_text("{}")
        message = f"report_dir {out} is itself a report folder (it holds criteria.json); pass "
        message += f"the folder above it (report_dir={tmp_path})"
    before = {p: p.read_bytes() for p in [*out.rglob("*"), *outside.rglob("*")] if p.is_file()}
    cfg = config(tmp_path / "o", saes[0], inputs, f"report_dir={out}")
    with pytest.raises(ReportFolderError, match=re.escape(message)):
        run.analyze(cfg)
    after = {p: p.read_bytes() for p in [*out.rglob("*"), *outside.rglob("*")] if p.is_file()}
    assert after == before  # not even a lock file


def test_rerendering_never_writes_through_a_symlink(tmp_path):
    report = {"metadata": {"source": "x"}, "features": {"3": {}, "7": {}}}
    folder, outside = tmp_path / "report", tmp_path / "outside"
    (folder).mkdir()
    (folder / "criteria.json").write_text(json.dumps(report))
    write_dashboards(folder)
    outside.mkdir()
    victim = outside / "victim.html"
    victim.write_text("precious")
    (folder / "features" / "3.html").unlink()
    (folder / "features" / "3.html").symlink_to(victim)
    (folder / "index.html").write_text("old index")
    with pytest.raises(SystemExit) as done:
        rerender([str(folder)])
    assert str(done.value) == (
        f"python -m sae_lightning.report: UnsafeReportPath: {folder / 'features' / '3.html'} -> "
        f"{victim} is a symlink: the dashboards are only written as plain files inside the "
        f"report folder {folder}, never through a link; remove it, or render into a fresh "
        "folder with --out DIR"
    )
    assert victim.read_text() == "precious"
    assert (folder / "index.html").read_text() == "old index"  # refused before any write
    # a symlinked assets/ folder: refused, and nothing written into the folder it points at
    (folder / "features" / "3.html").unlink()
    for name in ("dashboard.js", "dashboard.css", "plotly.min.js"):
        (outside / name).write_text("theirs")
    shutil.rmtree(folder / "assets")
    (folder / "assets").symlink_to(outside)
    with pytest.raises(SystemExit, match=r"assets -> .*outside is not a folder of the report"):
        rerender([str(folder)])
    # the writer itself, without the check first, opens folders without following links
    with ReportFiles(folder) as files, pytest.raises(UnsafeReportPath, match="not a folder"):
        files.write("assets/dashboard.js", "x")
    assert {p.name: p.read_text() for p in outside.iterdir()} == {
        "victim.html": "precious", "dashboard.js": "theirs", "dashboard.css": "theirs",
        "plotly.min.js": "theirs",
    }  # fmt: skip
    # a plain report folder re-renders, every file a plain file
    (folder / "assets").unlink()
    rerender([str(folder)])
    assert not any(p.is_symlink() for p in folder.rglob("*"))
    assert sorted(p.name for p in (folder / "features").iterdir()) == ["3.html", "7.html"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["prompt=''"], r"prompt='' is an empty text; valid: null \(no prompts page\), a "),
        (["prompt=['']"], r"prompt=\[''\] holds an empty or non-text prompt \(item 0: ''\)"),
        (["prompt=[]"], r"prompt=\[\] is not a prompt; valid: null"),
        (["features=[]"], r"features=\[\] selects nothing"),
        (["features=[3,-1]"], r"features=\[3, -1\]: -1 is not a feature index"),
        (["features=top:0"], r"features='top:0': N in top:N must be an integer >= 1"),
        (["features='prompts:[]'"], r"prompts must be a non-empty list of non-empty texts"),
        (["criteria=[universality]"], r"criteria \['universality'\] need compare_with=OTHER_SAE"
         r" .*but compare_with=None: pass compare_with=PATH or leave \['universality'\] out"),
        (["criteria=[universality]", "compare_with=x", "criteria.universality.threshold=2"],
         r"threshold must be in \(0, 1\], got 2"),
    ],
)  # fmt: skip
def test_bad_options_fail_before_anything_loads(
    tmp_path, saes, inputs, no_loading, overrides, message
):
    cfg = config(tmp_path / "out", saes[0], inputs, *overrides)
    with pytest.raises((ValueError, InstantiationException), match=message):
        run.analyze(cfg)
    assert not (tmp_path / "out").exists()  # nothing written, not even the lock


def test_compare_with_without_a_criterion_reading_it_warns(
    tmp_path, saes, inputs, no_loading, caplog
):
    cfg = config(tmp_path / "out", saes[0], inputs, f"compare_with={saes[1]}")
    with caplog.at_level("WARNING"), pytest.raises(AssertionError, match="were loaded"):
        run.analyze(cfg)
    assert (
        f"compare_with={saes[1]} is loaded, but none of the criteria ['mine'] reads it"
        in caplog.text
    )  # noqa: E501


@pytest.mark.parametrize("suffix", [".ckpt", ".pt"])
def test_empty_truncated_and_pickled_sae_files_are_named(tmp_path, suffix):
    sae = random_sae(1024, 8)
    (tmp_path / "sae_cfg.json").write_text(json.dumps({"d_mlp": 1024, "dict_size": 8}))
    path = tmp_path / f"sae{suffix}"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} is empty \(0 bytes\)"):
        load_sae(path)
    if suffix == ".ckpt":
        torch.save({"state_dict": sae.state_dict(), "sae_config": sae.config()}, path)
    else:
        torch.save(dict(sae.state_dict()), path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(path))} is truncated \({len(whole) // 2} bytes\)"
    ):  # noqa: E501
        load_sae(path)
    torch.save({"W_enc": torch.nn.Linear(2, 2)}, path)  # a pickled module, not plain tensors
    with pytest.raises(ValueError) as refused:
        load_sae(path)
    assert str(refused.value) == (
        f"{path} is not a safe checkpoint: it holds pickled objects that are not plain tensors "
        "(it names torch.nn.modules.linear.Linear); it was not loaded"
    )
