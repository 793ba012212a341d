"""House rules that code review would otherwise have to catch."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_never_imports_plugins():
    offenders = {
        str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.split(".")[0] == "plugins")
        for p in (ROOT / "sae_lightning").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_source_files_stay_small():
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines())
        for folder in ("sae_lightning", "plugins", "benchmarks")
        for p in (ROOT / folder).rglob("*.py")
    }
    assert sizes and {k: n for k, n in sizes.items() if n > 500} == {}


def test_entry_points_are_thin():
    for name in ("train.py", "pretrain.py", "analyze.py"):
        assert len((ROOT / name).read_text().splitlines()) <= 120, name
