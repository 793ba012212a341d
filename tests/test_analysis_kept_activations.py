"""The first pass keeps the hook activations of the leading contexts; the streaming pass
takes them instead of running the frozen model on those contexts again (same numbers)."""

from __future__ import annotations

import pytest
import torch

from plugins._common import first_pass
from sae_lightning.analysis import reader as reader_py
from sae_lightning.analysis.criterion import AnalysisContext
from sae_lightning.analysis.module import KEPT_ACTIVATIONS, AnalysisModule, KeptActivations
from sae_lightning.analysis.results import AnalysisResults
from sae_lightning.hooks import capture_activations
from sae_lightning.saes import ReLUSAE

HOOK = "blocks.0.mlp.hook_post"


def test_kept_rows_are_handed_out_once_and_within_the_budget():
    kept = KeptActivations(max_bytes=4 * 3 * 2 * 4)  # four rows of [3, 2] float32
    acts = torch.arange(24.0).view(4, 3, 2)
    kept.keep(10, acts)
    kept.keep(20, acts)  # over the budget: not kept
    cpu = torch.device("cpu")
    assert kept.take([12, 20], cpu) is None  # 20 was not kept: nothing handed out
    assert torch.equal(kept.take([12, 10], cpu), acts[[2, 0]])
    assert kept.take([10], cpu) is None  # taken already
    assert sorted(kept.rows) == [11, 13]
    assert kept.take([11], torch.device("meta")) is None  # kept on another device


@pytest.fixture
def analysis(embedded_model):
    torch.manual_seed(0)
    sae = ReLUSAE(1024, 64)
    gen = torch.Generator().manual_seed(1)
    contexts = torch.randint(1, embedded_model.cfg.d_vocab, (6, 12), generator=gen)
    contexts[:, 0] = embedded_model.tokenizer.bos_token_id
    features = [3, 7, 40]
    vocab = [""] * int(embedded_model.cfg.d_vocab)
    ctx = AnalysisContext(sae, embedded_model, HOOK, features, vocab, contexts)
    module = AnalysisModule(sae, embedded_model, ctx, AnalysisResults(features, {}))
    return ctx, module


def test_stream_takes_the_first_pass_activations(analysis, monkeypatch):
    ctx, module = analysis
    first_pass(ctx, n_contexts=4, batch_size=2)  # keeps contexts 0..3
    assert sorted(ctx.artefacts.get(KEPT_ACTIVATIONS).rows) == [0, 1, 2, 3]
    forwards = []

    def counted(model, tokens, hook_name):
        forwards.append(tokens.shape[0])
        return capture_activations(model, tokens, hook_name)

    monkeypatch.setattr(reader_py, "capture_activations", counted)  # every capture
    rows = torch.tensor([1, 2])
    with torch.no_grad():
        batch = module.validation_step((ctx.contexts[rows], rows), 0)
        assert forwards == []  # the kept activations, no frozen forward
        fresh = capture_activations(ctx.model, ctx.contexts[rows], HOOK)[:, ctx.start :]
        torch.testing.assert_close(batch.neuron_acts, fresh, rtol=1e-6, atol=1e-6)
        expected = ctx.sae.encode(fresh)[..., ctx.features]
        torch.testing.assert_close(batch.feature_acts, expected, rtol=1e-5, atol=1e-6)
        assert (batch.feature_acts > 0).any()
        module.validation_step((ctx.contexts[rows], rows), 1)  # handed out once
        module.validation_step((ctx.contexts[[3, 4]], torch.tensor([3, 4])), 2)  # 4 not kept
    assert forwards == [2, 2]
