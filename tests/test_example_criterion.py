"""The README's custom-criterion how-to (examples/custom_criterion) runs by config alone."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_analysis_core import HOOK, META, ROOT, random_sae, tiny_corpus  # noqa: F401

from sae_lightning.analysis.loading import load_sae
from sae_lightning.analysis.run import analyze, load_contexts, vocab_strings
from sae_lightning.formats import save_saelens
from sae_lightning.hooks import capture_activations

EXAMPLE = ROOT / "examples" / "custom_criterion"


def test_digit_share_from_outside_the_package(tmp_path, tiny_corpus, monkeypatch, embedded_model):  # noqa: F811
    monkeypatch.syspath_prepend(str(EXAMPLE))  # what PYTHONPATH=examples/custom_criterion does
    save_saelens(random_sae(1024, 32), tmp_path / "sae", META)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "analyze",
            overrides=[
                f"sae_path={tmp_path / 'sae'}",
                f"paths.output_dir={tmp_path / 'out'}",
                f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]",
                "criteria=[digit_share]",
                f"data.source.corpus={tiny_corpus}",
                "data.split=train",
                "tokens=2048",
                "+trainer.enable_progress_bar=false",
            ],
        )
    analyze(cfg)
    assert "digit_share" in sys.modules  # imported from the example folder, not the package
    data = json.loads((tmp_path / "out" / "report" / "criteria.json").read_text())
    sae, _ = load_sae(tmp_path / "sae")
    contexts = load_contexts(cfg, embedded_model, 32)
    digit = torch.tensor([s.strip().isdigit() for s in vocab_strings(embedded_model)])
    with torch.inference_mode():  # the pass leaves out BOS (position 0), as training does
        feats = sae.encode(capture_activations(embedded_model, contexts, HOOK))[:, 1:]
    feats, on_digit = feats.flatten(0, 1), digit[contexts[:, 1:].flatten()]  # [tokens, ...]
    for f in (0, 7, 31):
        total = feats[:, f].double().clamp(min=0).sum()
        expected = float(feats[on_digit, f].double().clamp(min=0).sum() / total)
        got = data["features"][str(f)]["digit_share"]
        assert got["digit_share"] == pytest.approx(expected, rel=1e-5)
        assert got["verdict"] == (expected >= 0.8)
