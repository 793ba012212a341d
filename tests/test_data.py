from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_lightning.data.activations import ActivationStream
from sae_lightning.data.corpus import CorpusError
from sae_lightning.data.sources import CorpusSource, TokenFileSource
from sae_lightning.data.tokens import make_contexts
from sae_lightning.hooks import capture_activations, validate_hook

HOOK = "blocks.0.mlp.hook_post"


@pytest.fixture(scope="module")
def contexts(embedded_model):
    import json.decoder
    import textwrap

    text = "".join(Path(m.__file__).read_text() for m in (json.decoder, textwrap))
    stream = torch.tensor(embedded_model.tokenizer(text, add_special_tokens=False)["input_ids"])
    return make_contexts(stream, 24, embedded_model.tokenizer.bos_token_id)[:30]  # [30, 24]


def _stream(model, contexts, **kw):
    args = dict(
        batch_size=40, buffer_tokens=200, refill_fraction=0.5, contexts_per_forward=4, epochs=1
    )
    return ActivationStream(model, contexts, HOOK, **{**args, **kw})


def _key(rows: torch.Tensor) -> torch.Tensor:
    """A per-row fingerprint to match rows up to float noise."""
    proj = torch.randn(
        rows.shape[-1], generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    return rows.double() @ proj


def _reference(model, contexts):
    with torch.inference_mode():
        _, cache = model.run_with_cache(contexts, names_filter=HOOK)
    return cache[HOOK][:, 1:].reshape(-1, cache[HOOK].shape[-1])  # BOS dropped


@pytest.mark.parametrize("refill_fraction", [0.5, 1.0])
def test_stream_equals_run_with_cache_each_activation_once(
    embedded_model, contexts, refill_fraction
):
    batches = list(_stream(embedded_model, contexts, refill_fraction=refill_fraction))
    got, ref = torch.cat(batches), _reference(embedded_model, contexts)
    assert got.shape == ref.shape == (30 * 23, 1024)
    assert all(len(b) == 40 for b in batches[:-1])
    got_sorted, ref_sorted = got[_key(got).argsort()], ref[_key(ref).argsort()]
    torch.testing.assert_close(got_sorted, ref_sorted, atol=1e-5, rtol=1e-5)
    # shuffled: consecutive stream rows do not follow the context order
    assert not torch.allclose(got[:40], ref[:40])


def test_second_epoch_reshuffles_but_repeats_the_multiset(embedded_model, contexts):
    batches = list(_stream(embedded_model, contexts, epochs=2))
    both = torch.cat(batches)
    first, second = both[: 30 * 23], both[30 * 23 :]
    torch.testing.assert_close(_key(first).sort().values, _key(second).sort().values)
    assert not torch.equal(first[:40], second[:40])


def test_ddp_ranks_get_disjoint_shards(embedded_model, contexts):
    streams = [_stream(embedded_model, contexts, rank=r, world_size=2) for r in (0, 1)]
    rows = [set(s.shard_rows(r, 2).tolist()) for r, s in enumerate(streams)]
    assert not rows[0] & rows[1] and rows[0] | rows[1] == set(range(len(contexts)))
    parts = [torch.cat(list(s)) for s in streams]
    assert len(parts[0]) == len(parts[1]) == 15 * 23
    # what the two ranks emit together is every activation exactly once (a multiset, with counts)
    counts = Counter(np.round(_key(torch.cat(parts)).numpy(), 5).tolist())
    assert counts == Counter(
        np.round(_key(_reference(embedded_model, contexts)).numpy(), 5).tolist()
    )
    for r, part in enumerate(parts):
        torch.testing.assert_close(
            _key(part).sort().values,
            _key(_reference(embedded_model, contexts[sorted(rows[r])])).sort().values,
        )


@pytest.mark.parametrize("stop_after", [1, 5, 9])
def test_resumed_stream_continues_exactly(embedded_model, contexts, stop_after):
    full = _stream(embedded_model, contexts, epochs=2)
    it = iter(full)
    for _ in range(stop_after):
        next(it)
    state = full.state_after(stop_after)
    expected = list(it)
    resumed = _stream(embedded_model, contexts, epochs=2)
    resumed.load_state(state)
    got = list(resumed)
    assert len(got) == len(expected) > 0
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_capture_stops_at_the_hook(embedded_model, contexts):
    calls = []
    embedded_model.hook_dict["ln_final.hook_in"].add_hook(lambda a, hook: calls.append(1))
    try:
        acts = capture_activations(embedded_model, contexts[:2], HOOK)
    finally:
        embedded_model.reset_hooks()
    assert acts.shape == (2, 24, 1024) and calls == []


def test_bad_hook_name_lists_valid_hooks(embedded_model):
    with pytest.raises(ValueError, match="'blocks.0.mlp.hook_pots' is not a hook point") as err:
        validate_hook(embedded_model, "blocks.0.mlp.hook_pots")
    assert "blocks.0.mlp.hook_post" in str(err.value) and "blocks.0.hook_resid_post" in str(
        err.value
    )


def test_token_file_source_1d_and_2d(tmp_path, embedded_model):
    tok = embedded_model.tokenizer
    flat = np.arange(1, 1 + 20 * 9, dtype=np.int32)
    np.save(tmp_path / "flat.npy", flat)
    train = TokenFileSource(str(tmp_path / "flat.npy"), val_fraction=0.1).contexts("train", tok, 10)
    val = TokenFileSource(str(tmp_path / "flat.npy"), val_fraction=0.1).contexts("val", tok, 10)
    assert val.shape == (2, 10) and train.shape == (18, 10)
    assert (train[:, 0] == tok.bos_token_id).all() and train[0, 1].item() == 2 * 9 + 1
    grid = np.arange(50, dtype=np.int64).reshape(5, 10)
    np.save(tmp_path / "grid.npy", grid)
    assert torch.equal(
        TokenFileSource(str(tmp_path / "grid.npy"), 0.2).contexts("train", tok, 10),
        torch.from_numpy(grid[1:]),
    )
    with pytest.raises(
        CorpusError, match=r"shape \(5, 10\); expected \[n_tokens\] or \[n_contexts, 12\]"
    ):
        TokenFileSource(str(tmp_path / "grid.npy")).contexts("train", tok, 12)
    with pytest.raises(CorpusError, match="does not exist"):
        TokenFileSource(str(tmp_path / "nope.npy")).contexts("train", tok, 12)


def test_corpus_source_on_a_folder(tmp_path, embedded_model):
    for i in range(40):
        (tmp_path / f"m{i:02d}.py").write_text(
            f"import os\n\ndef f{i}(x):\n    return x + {i}\n" * 5
        )
    source = CorpusSource(str(tmp_path), val_fraction=0.2)
    train = source.contexts("train", embedded_model.tokenizer, 16)
    val = source.contexts("val", embedded_model.tokenizer, 16)
    assert train.shape[1] == val.shape[1] == 16 and len(train) > len(val) > 0
    with pytest.raises(CorpusError, match="does not exist"):
        CorpusSource(str(tmp_path / "missing")).contexts("train", embedded_model.tokenizer, 16)


def test_state_of_another_shard_is_not_misused(embedded_model, contexts):
    rank0 = _stream(embedded_model, contexts, rank=0, world_size=2, epochs=1)
    it = iter(rank0)
    next(it)
    state = rank0.state_after(1)
    fresh = list(_stream(embedded_model, contexts, rank=1, world_size=2, epochs=1))
    resumed = _stream(embedded_model, contexts, rank=1, world_size=2, epochs=1)
    resumed.load_state(state)
    got = list(resumed)  # rank 1 cannot continue rank 0's stream: it starts its own afresh
    assert len(got) == len(fresh) and all(
        torch.equal(a, b) for a, b in zip(got, fresh, strict=True)
    )


def test_sources_read_their_data_once_for_both_splits(tmp_path, embedded_model, monkeypatch):
    import sae_lightning.data.sources as sources

    for i in range(20):
        (tmp_path / f"m{i:02d}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 8)
    loads = []
    real = sources.load_documents
    monkeypatch.setattr(sources, "load_documents", lambda *a: loads.append(a) or real(*a))
    corpus = sources.CorpusSource(str(tmp_path), val_fraction=0.2)
    tok = embedded_model.tokenizer
    assert len(corpus.contexts("train", tok, 16)) > len(corpus.contexts("val", tok, 16)) > 0
    assert len(loads) == 1

    rows = [{"text": f"import os\nprint({i})\n" * 4, "ids": [5, 6, 7] * 10} for i in range(30)]
    streams = []
    hf = sources.HFDatasetSource("fake/dataset", max_tokens=10_000, val_fraction=0.1)
    monkeypatch.setattr(hf, "_load", lambda: streams.append(1) or iter(rows))
    train, val = hf.contexts("train", tok, 16), hf.contexts("val", tok, 16)
    assert len(streams) == 1 and (train[:, 0] == tok.bos_token_id).all()
    expected = make_contexts(
        torch.cat(
            [
                torch.tensor(
                    [tok.bos_token_id, *tok(r["text"], add_special_tokens=False)["input_ids"]]
                )
                for r in rows
            ]
        ),
        16,
        tok.bos_token_id,
    )
    assert torch.equal(torch.cat([val, train]), expected)
    by_ids = sources.HFDatasetSource("fake/dataset", tokens_column="ids", val_fraction=0.1)
    monkeypatch.setattr(by_ids, "_load", lambda: iter(rows))
    assert by_ids.contexts("train", tok, 16)[0, 1:4].tolist() == [5, 6, 7]
