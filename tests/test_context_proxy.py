"""Next-token refinement of automatic proxies (plugins/_context.py), with known answers."""

from __future__ import annotations

import pytest
import torch
from test_plugins import run

from plugins import _context
from plugins.specificity import Sensitivity, Specificity
from sae_lightning.analysis.criterion import AnalysisContext
from sae_lightning.saes import ReLUSAE

STR_TOKENS = [".", " x", "y", "z"]  # '.' is ambiguous: sentence end (next ' x') or not
HOOK = "blocks.0.mlp.hook_post"


class LookaheadModel:
    """Hook activation dim 0 = 1 on '.' followed by ' x' (a sentence-final full stop);
    dim 1 = 0.5 on 'z' whatever follows. (A test fake: a real model cannot look ahead.)"""

    def acts(self, tokens: torch.Tensor) -> torch.Tensor:
        acts = torch.zeros(*tokens.shape, 2)
        acts[:, :-1, 0] = ((tokens[:, :-1] == 0) & (tokens[:, 1:] == 1)).float()
        acts[..., 1] = 0.5 * (tokens == 3).float()
        return acts

    def run_with_hooks(self, tokens: torch.Tensor, fwd_hooks: list) -> None:
        for _, fn in fwd_hooks:
            fn(self.acts(tokens), None)


def _ctx() -> AnalysisContext:
    sae = ReLUSAE(2, 2, apply_b_dec_to_input=False)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.b_enc.zero_()
    contexts = torch.randint(0, 4, (24, 16), generator=torch.Generator().manual_seed(0))
    return AnalysisContext(
        sae=sae,
        model=LookaheadModel(),
        hook_name=HOOK,
        features=[0, 1],
        str_tokens=STR_TOKENS,
        contexts=contexts,
    )


def test_next_token_classes():
    tokens = torch.tensor([[0, 1, 0, 2]])
    next_ws, known = _context.next_token_classes(tokens, _context.whitespace_vocab(STR_TOKENS))
    assert next_ws.tolist() == [[True, False, False, False]]
    assert known.tolist() == [[True, True, True, False]]


def test_sentence_final_full_stop_is_found_by_the_refined_proxy():
    ctx = _ctx()
    c = ctx.contexts
    sentence_end = int(((c[:, :-1] == 0) & (c[:, 1:] == 1)).sum())
    all_stops = int((c == 0).sum())
    assert 0 < sentence_end < all_stops / 2  # most '.' are not sentence ends
    spec, sens = run(Specificity(), ctx, size=5), run(Sensitivity(), ctx, size=5)
    assert spec[0].proxy == "tokens {'.'}, next token starts with whitespace"
    assert spec[0].specificity == 1.0 and sens[0].sensitivity == 1.0
    assert sens[0].n_proxy_tokens == sentence_end
    # 'z' fires whatever follows: its proxy is not refined
    assert spec[1].proxy == "tokens {'z'}" and sens[1].sensitivity == 1.0
    assert sens[1].n_proxy_tokens == int((c == 3).sum())


def test_without_refinement_the_full_stop_looks_insensitive():
    ctx = _ctx()
    c = ctx.contexts
    sens = run(Sensitivity(context_purity=None), ctx, size=5)
    assert sens[0].proxy == "tokens {'.'}"
    expected = int(((c[:, :-1] == 0) & (c[:, 1:] == 1)).sum()) / int((c == 0).sum())
    assert sens[0].sensitivity == pytest.approx(expected, rel=1e-6)
    assert sens[0].verdict is False


def test_streaming_equals_one_shot_with_refinement():
    ctx = _ctx()
    one = run(Sensitivity(), ctx, size=24)
    many = run(Sensitivity(), _ctx(), size=3)
    assert one == many


def test_specificity_and_sensitivity_share_one_proxy_resolution(monkeypatch):
    ctx = _ctx()
    calls = []
    real = _context.refinements
    monkeypatch.setattr(_context, "refinements", lambda *a, **k: calls.append(1) or real(*a, **k))
    spec, sens = run(Specificity(), ctx, size=5), run(Sensitivity(), ctx, size=5)
    assert len(calls) == 1 and spec[0].proxy == sens[0].proxy
    run(Sensitivity(context_purity=0.99), ctx, size=5)  # other options: resolved anew
    assert len(calls) == 2


class BackgroundModel(LookaheadModel):
    """As LookaheadModel, plus weak background firing (0.2) of dim 0 on every other '.'."""

    def acts(self, tokens: torch.Tensor) -> torch.Tensor:
        acts = super().acts(tokens)
        acts[..., 0] = torch.where((tokens == 0) & (acts[..., 0] == 0), 0.2, acts[..., 0])
        return acts


def test_refinement_judges_the_top_activations_not_the_weak_background():
    ctx = _ctx()
    ctx.model = BackgroundModel()
    c = ctx.contexts
    sentence_end = ((c[:, :-1] == 0) & (c[:, 1:] == 1)).sum()
    other = (c == 0).sum() - sentence_end
    assert sentence_end / (sentence_end + 0.2 * other) < 0.8  # all-mass purity would fail
    spec, sens = run(Specificity(), ctx, size=5), run(Sensitivity(), ctx, size=5)
    assert spec[0].proxy == "tokens {'.'}, next token starts with whitespace"
    assert spec[0].specificity == 1.0 and sens[0].sensitivity == 1.0


def test_punctuation_closure_adds_the_same_mark_glued_to_punctuation():
    from sae_lightning.analysis.proxies import punctuation_closure

    vocab = [".", ").", "...", " .", "x.", "a", ",", "),", '".', "._"]
    assert punctuation_closure([[0], [5], [6, 5], []], vocab) == [
        [0, 1, 3, 8],  # not '...' (the mark repeats), 'x.' (a letter), '._' (ends in '_')
        [5],
        [6, 5, 7],  # the proxy first, then the additions
        [],
    ]
