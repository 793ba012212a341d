from __future__ import annotations

import json

import pytest

from sae_lightning.data.corpus import (
    CorpusError,
    Document,
    folder_documents,
    is_validation,
    jsonl_documents,
    load_documents,
    split_documents,
    stdlib_documents,
)


def test_stdlib_corpus_is_deterministic(stdlib_docs):
    again = stdlib_documents()
    assert [d.name for d in again] == [d.name for d in stdlib_docs]
    assert all(a.text == b.text for a, b in zip(again, stdlib_docs, strict=True))
    names = [d.name for d in stdlib_docs]
    assert len(names) == len(set(names)) > 500


def test_stdlib_corpus_excludes_tests_and_site_packages(stdlib_docs):
    code = [d.name for d in stdlib_docs if d.name.startswith("stdlib/")]
    prose = [d.name for d in stdlib_docs if d.name.startswith("pydoc/")]
    assert any(n == "stdlib/json/decoder.py" for n in code)
    assert len(prose) > 50
    for name in code:
        parts = name.split("/")[1:]
        assert "site-packages" not in parts, name
        assert not any(
            p in ("test", "tests", "idle_test") or p.startswith("test") for p in parts[:-1]
        ), name
        assert not parts[-1].startswith("test_"), name


def test_split_is_disjoint_complete_and_stable(stdlib_docs):
    train = split_documents(stdlib_docs, "train")
    val = split_documents(stdlib_docs, "val")
    train_names, val_names = {d.name for d in train}, {d.name for d in val}
    assert not train_names & val_names
    assert train_names | val_names == {d.name for d in stdlib_docs}
    assert 0.02 < len(val) / len(stdlib_docs) < 0.10
    # membership depends on the name only, not on position or neighbours
    reversed_val = split_documents(list(reversed(stdlib_docs)), "val")
    assert {d.name for d in reversed_val} == val_names
    assert all(is_validation(d.name) for d in val)


def test_split_rejects_bad_arguments(stdlib_docs):
    with pytest.raises(CorpusError, match="'dev'"):
        split_documents(stdlib_docs, "dev")  # type: ignore[arg-type]
    with pytest.raises(CorpusError, match="1.5"):
        split_documents(stdlib_docs, "val", val_fraction=1.5)


def test_missing_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CorpusError, match="does not exist") as err:
        load_documents(missing)
    assert str(missing) in str(err.value)


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "blank.txt").write_text("   \n")
    with pytest.raises(CorpusError, match="no non-empty documents") as err:
        folder_documents(tmp_path)
    assert ".py" in str(err.value) and str(tmp_path) in str(err.value)


def test_folder_reads_py_txt_md_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.py").write_text("import os\n")
    (tmp_path / "a.md").write_text("# Title\n")
    (tmp_path / "c.txt").write_text("Some prose.\n")
    (tmp_path / "skip.json").write_text("{}")
    docs = load_documents(tmp_path)
    assert docs == [
        Document("a.md", "# Title\n"),
        Document("b/z.py", "import os\n"),
        Document("c.txt", "Some prose.\n"),
    ]


def test_jsonl_reads_text_field_and_rejects_bad_records(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps({"text": t}) for t in ["one.", "", "two."]) + "\n")
    assert [d.text for d in load_documents(good)] == ["one.", "two."]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(CorpusError, match="line 1 has no string field 'text'.*body"):
        jsonl_documents(bad)
    with pytest.raises(CorpusError, match="does not exist"):
        jsonl_documents(tmp_path / "absent.jsonl")
