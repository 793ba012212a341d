"""data=hf and data=tokens from the command line: train.py and analyze.py on local files.

The runs start together (each pays ~10 s of imports) and every test reads its own result.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_data_sources import stdlib_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
TINY = [  # a few steps of a small SAE: each run well under 15 s of its own
    "debug=fast",
    "trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "trainer.log_every_n_steps=2",
    "data.val_contexts=4",
    "sae.d_sae=128",
    "module.b_dec_init_tokens=256",
]


def _start(script: str, args: list[str], out: Path) -> subprocess.Popen:
    """Start a command line; its stderr goes to ``<out>.stderr`` (a pipe could fill up)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    with open(f"{out}.stderr", "w") as stderr:
        return subprocess.Popen(
            [sys.executable, script, *args, f"hydra.run.dir={out}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def _finish(proc: subprocess.Popen, out: Path) -> tuple[int, str, Path]:
    return proc.wait(timeout=600), Path(f"{out}.stderr").read_text(), out


def _inputs(folder: Path, tokenizer) -> dict[str, Path]:
    from datasets import Dataset, DatasetDict

    rows = stdlib_rows()
    ids = tokenizer(rows, add_special_tokens=False)["input_ids"]
    tokens = np.array([t for row in ids for t in [tokenizer.bos_token_id, *row]], np.int32)
    DatasetDict({"train": Dataset.from_dict({"tokens": ids})}).save_to_disk(str(folder / "disk"))
    np.save(folder / "tokens.npy", tokens)
    np.save(folder / "big.npy", np.concatenate([tokens, [5000]]).astype(np.int32))
    (folder / "cut.npy").write_bytes((folder / "tokens.npy").read_bytes()[:-64])
    return {
        "jsonl": write_jsonl(folder / "texts.jsonl", [{"text": t} for t in rows]),
        "disk": folder / "disk",
        "npy": folder / "tokens.npy",
        "big": folder / "big.npy",
        "cut": folder / "cut.npy",
    }


def _train_args(data: dict[str, Path]) -> dict[str, list[str]]:
    jsonl = ["data=hf", f"data.source.path={data['jsonl']}", "data.source.max_tokens=30000"]
    return {
        "jsonl": jsonl,
        "disk": [
            "data=hf",
            f"data.source.path={data['disk']}",
            "data.source.tokens_column=tokens",
            "data.source.streaming=false",
        ],
        "npy": ["data=tokens", f"data.source.path={data['npy']}"],
        "big": ["data=tokens", f"data.source.path={data['big']}"],
        "cut": ["data=tokens", f"data.source.path={data['cut']}"],
        "column": [*jsonl, "data.source.text_column=content"],
    }


ANALYSED = ("jsonl", "disk", "npy")  # analyze.py runs on each of these runs, same source


def _run_together(folder: Path, data: dict[str, Path], names: list[str]) -> dict:
    """name -> (exit status, stderr, output folder); "analysis-<name>" analyses run <name>."""
    args = _train_args(data)
    procs = {
        n: _start("train.py", [*TINY, *args[n], f"paths.output_dir={folder / n}"], folder / n)
        for n in names
    }
    results = {}
    for name, proc in list(procs.items()):
        results[name] = _finish(proc, folder / name)
        if name in ANALYSED:  # analyse that run, with its source, while the others finish
            out = folder / f"analysis-{name}"
            analysis = [f"sae_path={folder / name}", *args[name], f"report_dir={out}"]
            analysis += ["dashboards=false", "criteria=[top_activations]", "tokens=1024"]
            procs[f"analysis-{name}"] = _start("analyze.py", analysis, out)
    for name in ANALYSED:
        if f"analysis-{name}" in procs:
            results[f"analysis-{name}"] = _finish(
                procs[f"analysis-{name}"], folder / f"analysis-{name}"
            )
    return results


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, embedded_model) -> tuple[Path, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("cli")
    return folder, _inputs(folder, embedded_model.tokenizer)


@pytest.fixture(scope="module")
def runs(inputs) -> dict[str, tuple[int, str, Path]]:
    return _run_together(*inputs, ["jsonl", "disk", "npy", "big"])


@pytest.mark.parametrize("name", ["jsonl", "disk", "npy"])
def test_train_runs_on_local_data_and_exports(runs, name):
    status, stderr, out = runs[name]
    assert status == 0, stderr[-3000:]
    cfg = json.loads((out / "sae" / "cfg.json").read_text())
    assert cfg["d_sae"] == 128 and cfg["metadata"]["hook_name"] == "blocks.0.mlp.hook_post"
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert math.isfinite(metrics["val/loss_recovered"]) and metrics["val/l0"] > 0


@pytest.mark.parametrize("name", ANALYSED)
def test_analyze_reads_the_same_source(runs, name):
    status, stderr, out = runs[f"analysis-{name}"]
    assert status == 0, stderr[-3000:]
    report = json.loads((out / "report" / "criteria.json").read_text())
    n_tokens = report["metadata"]["n_tokens"]
    if name == "jsonl":  # tokens=1024: 8 of the 12 val contexts (5% of max_tokens=30000)
        assert n_tokens == 8 * 128
    else:  # the held-out split, at most ceil(1024 / 128) contexts of 128
        assert 0 < n_tokens <= 8 * 128 and n_tokens % 128 == 0
    assert report["metadata"]["source"] == str(runs[name][2] / "sae")  # that run's SAE
    assert report["features"] and "top_activations" in report["criteria"]


def _fails_with(result: tuple[int, str, Path], message: str) -> None:
    status, stderr, _ = result
    assert status != 0 and message in stderr, stderr[-3000:]
    assert "Traceback" not in stderr  # one line from train.py, not a stack


def test_out_of_vocabulary_ids_fail_with_one_clear_message(runs):
    message = "big.npy' holds token id 5000 (the largest), but the model's vocabulary has 4096"
    _fails_with(runs["big"], message)


@pytest.mark.slow
def test_truncated_file_and_missing_column_fail_with_one_clear_message(inputs):
    results = _run_together(*inputs, ["cut", "column"])
    _fails_with(results["cut"], "cut.npy' cannot be read as a .npy array")
    _fails_with(results["column"], "has no column 'content'; its columns: ['text']")
