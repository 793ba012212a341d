"""Token sources from local files: data=hf (json/jsonl, save_to_disk) and data=tokens (.npy).

Streamed and in-memory reads agree context for context; a streamed training stream shards
and resumes exactly; bad inputs fail with one message naming the value and the file.
"""

from __future__ import annotations

import json
import sysconfig
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_lightning.data.activations import ActivationStream
from sae_lightning.data.corpus import CorpusError
from sae_lightning.data.hf import HFDatasetSource
from sae_lightning.data.readers import ArrayContexts, StreamedContexts
from sae_lightning.data.sources import TokenFileSource
from sae_lightning.data.tokens import make_contexts

HOOK = "blocks.0.mlp.hook_post"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
MODULES = ("textwrap.py", "shlex.py", "fnmatch.py", "heapq.py", "bisect.py", "json/decoder.py")


def stdlib_rows(lines_per_row: int = 12) -> list[str]:
    """Short texts: a few stdlib modules cut every ``lines_per_row`` lines."""
    lines = [ln for m in MODULES for ln in (STDLIB / m).read_text().splitlines(keepends=True)]
    return ["".join(lines[i : i + lines_per_row]) for i in range(0, len(lines), lines_per_row)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("texts")
    return write_jsonl(
        folder / "texts.jsonl", [{"text": t, "n": i} for i, t in enumerate(stdlib_rows())]
    )


def reference(tokenizer, texts_: list[str], n_ctx: int, limit: int) -> torch.Tensor:
    """What every source must produce: BOS + tokens per row, concatenated, cut into contexts."""
    ids = tokenizer(texts_, add_special_tokens=False)["input_ids"]
    stream = torch.tensor([t for row in ids for t in [tokenizer.bos_token_id, *row]])
    return make_contexts(stream, n_ctx, tokenizer.bos_token_id)[:limit]


@pytest.mark.parametrize("max_tokens", [23 * 60, 10**6])  # the budget splits / the data splits
def test_streamed_and_in_memory_reads_agree(texts, embedded_model, max_tokens):
    tok = embedded_model.tokenizer
    expected = reference(tok, stdlib_rows(), 24, max_tokens // 23)
    n_val = 3 if max_tokens < 10**6 else round(0.05 * len(expected))  # 5% of 60 / of the data
    streamed = HFDatasetSource(str(texts), max_tokens=max_tokens, streaming=True)
    in_memory = HFDatasetSource(str(texts), max_tokens=max_tokens, streaming=False)
    val, train = streamed.reader("val", tok, 24), streamed.reader("train", tok, 24)
    assert isinstance(val, StreamedContexts) and isinstance(train, StreamedContexts)
    assert torch.equal(val[:], expected[:n_val]) and torch.equal(train[:], expected[n_val:])
    assert torch.equal(in_memory.reader("val", tok, 24), expected[:n_val])
    assert torch.equal(in_memory.reader("train", tok, 24), expected[n_val:])
    assert torch.equal(train[:5], expected[n_val : n_val + 5])


def test_save_to_disk_folder_tokens_column_picks_the_split(tmp_path, embedded_model):
    from datasets import Dataset, DatasetDict

    tok = embedded_model.tokenizer
    ids = tok(stdlib_rows(), add_special_tokens=False)["input_ids"]
    folder = tmp_path / "ds"
    DatasetDict(
        {"train": Dataset.from_dict({"tokens": ids}), "test": Dataset.from_dict({"tokens": [[7]]})}
    ).save_to_disk(str(folder))
    expected = reference(tok, stdlib_rows(), 32, 10**6)
    for streaming in (True, False):
        source = HFDatasetSource(str(folder), tokens_column="tokens", streaming=streaming)
        both = torch.cat([source.reader(s, tok, 32)[:] for s in ("val", "train")])
        assert torch.equal(both, expected)
    with pytest.raises(
        CorpusError, match=r"no split 'validation'; its splits: \['test', 'train'\]"
    ):
        HFDatasetSource(str(folder), split="validation").reader("train", tok, 32)


def test_pre_tokenized_rows_that_start_with_bos_keep_a_single_bos(tmp_path, embedded_model):
    """Rows of a pre-tokenized dataset that begin with BOS (as NeelNanda/c4-code-tokenized-2b's
    do) are not given a second: the stream is exactly the rows, concatenated."""
    from datasets import Dataset

    tok, bos = embedded_model.tokenizer, embedded_model.tokenizer.bos_token_id
    rows = [[bos, *ids] for ids in tok(stdlib_rows(), add_special_tokens=False)["input_ids"]]
    folder = tmp_path / "ds"
    Dataset.from_dict({"tokens": rows}).save_to_disk(str(folder))
    stream = torch.tensor([t for row in rows for t in row])
    expected = make_contexts(stream, 32, bos)
    source = HFDatasetSource(str(folder), tokens_column="tokens", streaming=False)
    got = torch.cat([source.reader(s, tok, 32) for s in ("val", "train")])
    assert torch.equal(got, expected[: len(got)]) and len(got) == len(expected)
    # one BOS per row in the bodies (a doubled BOS would make it two)
    assert int((got[:, 1:] == bos).sum()) <= len(rows) < 2 * int((got[:, 1:] == bos).sum())


def test_a_glob_or_a_folder_of_files_reads_like_one_file(tmp_path, texts, embedded_model):
    tok, lines = embedded_model.tokenizer, texts.read_text().splitlines(keepends=True)
    (tmp_path / "parts").mkdir()
    for i in range(0, len(lines), 50):  # part-000.jsonl, part-050.jsonl, ... sort in order
        (tmp_path / "parts" / f"part-{i:03d}.jsonl").write_text("".join(lines[i : i + 50]))
    whole = HFDatasetSource(str(texts), max_tokens=23 * 200).reader("train", tok, 24)[:]
    for path in (tmp_path / "parts", tmp_path / "parts" / "*.jsonl"):
        parts = HFDatasetSource(str(path), max_tokens=23 * 200).reader("train", tok, 24)[:]
        assert torch.equal(parts, whole)
    (tmp_path / "parts" / "x.parquet").write_bytes(b"")
    with pytest.raises(CorpusError, match=r"'.*parts' mixes json and parquet files: use one kind"):
        HFDatasetSource(str(tmp_path / "parts")).reader("train", tok, 24)


def test_streamed_shards_are_disjoint_and_cover_the_stream(texts, embedded_model):
    train = HFDatasetSource(str(texts), max_tokens=23 * 80).reader(
        "train", embedded_model.tokenizer, 24
    )
    every = train[:]  # [77, 24]
    for n_shards in (2, 3):
        for shard in range(n_shards):
            groups, got, g = train.groups(shard, n_shards, 4), [], 0
            while groups.has(g):
                got.append(groups.read(g))
                g += 1
            assert torch.equal(torch.cat(got), every[shard::n_shards])  # every n-th, in order
            assert g == -(-len(every[shard::n_shards]) // 4)


def _stream(contexts, model, **kw) -> ActivationStream:
    args = dict(batch_size=40, buffer_tokens=200, contexts_per_forward=4, epochs=2)
    return ActivationStream(model, contexts, HOOK, **{**args, **kw})


# (0.5, ...): activations linger in the buffer; (1.0, 5): two groups per fill, all emitted in
# four batches, so after batch 5 the buffer holds groups 2 and 3 only
@pytest.mark.parametrize("refill_fraction, stop_after", [(0.5, 1), (0.5, 6), (0.5, 30), (1.0, 5)])
def test_streamed_stream_resumes_exactly_from_its_mark(
    texts, embedded_model, refill_fraction, stop_after
):
    source = HFDatasetSource(str(texts), max_tokens=23 * 48)
    train = source.reader("train", embedded_model.tokenizer, 24)
    kw = dict(refill_fraction=refill_fraction)
    if refill_fraction == 1.0:
        kw.update(batch_size=46, buffer_tokens=184)  # a group is 4 contexts x 23 = 92
    full = _stream(train, embedded_model, **kw)
    it = iter(full)
    for _ in range(stop_after):
        next(it)
    state = full.state_after(stop_after)
    expected = list(it)
    starts = []
    rows = source._rows
    source._rows = lambda start: starts.append(start) or rows(start)
    resumed = _stream(train, embedded_model, **kw)
    resumed.load_state(state)
    got = list(resumed)
    assert len(got) == len(expected) > 0
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    group, row, _ = state["mark"]  # re-opened at the lowest pending group, not the beginning
    assert group == int(state["pending_ids"].min()) // (4 * 23) and starts[0] == row
    if refill_fraction == 1.0:
        assert group == 2 and row > 0


def test_streamed_epoch_emits_each_activation_once_across_ranks(texts, embedded_model):
    train = HFDatasetSource(str(texts), max_tokens=23 * 30).reader(
        "train", embedded_model.tokenizer, 24
    )
    parts = [
        torch.cat(list(_stream(train, embedded_model, rank=r, world_size=2, epochs=1)))
        for r in (0, 1)
    ]
    with torch.inference_mode():
        _, cache = embedded_model.run_with_cache(train[:], names_filter=HOOK)
    ref = cache[HOOK][:, 1:].reshape(-1, cache[HOOK].shape[-1])
    proj = torch.randn(
        ref.shape[-1], generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    key = lambda rows: Counter(np.round((rows.double() @ proj).numpy(), 4).tolist())  # noqa: E731
    assert len(parts[0]) == len(parts[1]) == 14 * 23  # 30 contexts: 2 val, 28 train
    assert key(torch.cat(parts)) == key(ref)


def test_token_file_is_memory_mapped_and_read_on_demand(tmp_path, embedded_model):
    tok = embedded_model.tokenizer
    flat = np.arange(1, 1 + 40 * 9, dtype=np.uint16)
    np.save(tmp_path / "flat.npy", flat)
    train = TokenFileSource(str(tmp_path / "flat.npy"), 0.1).reader("train", tok, 10)
    assert isinstance(train, ArrayContexts) and isinstance(train.array, np.memmap)
    expected = make_contexts(torch.from_numpy(flat.astype(np.int64)), 10, tok.bos_token_id)[4:]
    assert train.shape == (36, 10) and torch.equal(train[:], expected)
    assert torch.equal(train[torch.tensor([5, 0, 35])], expected[[5, 0, 35]])
    stream = _stream(train, embedded_model, epochs=1, batch_size=27, buffer_tokens=54)
    assert sum(len(b) for b in stream) == 36 * 9  # every position but BOS, once


def _npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def test_token_file_errors_name_the_file_and_the_value(tmp_path, embedded_model):
    tok = embedded_model.tokenizer
    big = _npy(tmp_path / "big.npy", np.array([1, 2, 70_000, 3] * 40, dtype=np.int32))
    with pytest.raises(
        CorpusError,
        match=r"big.npy' holds token id 70000 \(the largest\), but the model's vocabulary has "
        r"4096 ids \(valid: 0..4095\)",
    ):
        TokenFileSource(str(big)).reader("train", tok, 10, d_vocab=4096)
    neg = _npy(tmp_path / "neg.npy", np.array([1, -3, 2] * 40, dtype=np.int64))
    with pytest.raises(CorpusError, match=r"neg.npy' holds negative token id -3"):
        TokenFileSource(str(neg)).reader("train", tok, 10)
    cut = tmp_path / "cut.npy"
    cut.write_bytes(_npy(tmp_path / "whole.npy", np.arange(1000)).read_bytes()[:-100])
    with pytest.raises(
        CorpusError, match=rf"token file '{cut}' cannot be read as a .npy array .*truncated"
    ):
        TokenFileSource(str(cut)).reader("train", tok, 10)
    grid = _npy(tmp_path / "grid.npy", np.ones((8, 16), dtype=np.int64))
    with pytest.raises(
        CorpusError,
        match=r"grid.npy' has shape \(8, 16\); expected \[n_tokens\] or \[n_contexts, 10\]",
    ):
        TokenFileSource(str(grid)).reader("train", tok, 10)
    short = _npy(tmp_path / "short.npy", np.arange(5))
    with pytest.raises(
        CorpusError, match=r"short.npy' holds 5 tokens: fewer than one context of 10"
    ):
        TokenFileSource(str(short)).reader("train", tok, 10)


def test_dataset_errors_name_the_dataset_and_the_value(tmp_path, embedded_model):
    tok = embedded_model.tokenizer
    ids = write_jsonl(tmp_path / "ids.jsonl", [{"ids": [5, 6, 7] * 20}] * 3 + [{"ids": [1, 9000]}])
    for streaming in (True, False):
        source = HFDatasetSource(str(ids), tokens_column="ids", streaming=streaming)
        with pytest.raises(
            CorpusError,
            match=r"ids.jsonl' \(column 'ids', row 3\) holds token id 9000 \(the largest\), but "
            r"the model's vocabulary has 4096 ids",
        ):
            source.reader("train", tok, 16)
        with pytest.raises(CorpusError, match=r"has no column 'content'; its columns: \['ids'\]"):
            HFDatasetSource(str(ids), text_column="content", streaming=streaming).reader(
                "val", tok, 16
            )
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(CorpusError, match=r"empty.jsonl' is empty"):
        HFDatasetSource(str(tmp_path / "empty.jsonl")).reader("train", tok, 16)
    with pytest.raises(
        CorpusError, match=r"holds int, not text \(set tokens_column for token ids\)"
    ):
        HFDatasetSource(str(write_jsonl(tmp_path / "n.jsonl", [{"text": 3}]))).reader(
            "val", tok, 16
        )
    with pytest.raises(CorpusError, match=r"dataset file '.*missing.jsonl' does not exist"):
        HFDatasetSource(str(tmp_path / "missing.jsonl")).reader("train", tok, 16)
    few = write_jsonl(tmp_path / "few.jsonl", [{"ids": [5] * 100}])  # 1 context of 64
    with pytest.raises(
        CorpusError, match=r"only 1 contexts: too few to hold out 5% for validation"
    ):
        HFDatasetSource(str(few), tokens_column="ids").reader("train", tok, 64)
