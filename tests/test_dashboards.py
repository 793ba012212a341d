"""HTML dashboards: pages from a real analysis of the embedded model, their numbers, escaping,
errors, the prompt view, and (in headless Chromium) that they work offline."""

from __future__ import annotations

import json
import re
import sysconfig
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sae_lightning.analysis.loading import load_sae
from sae_lightning.analysis.run import analyze, load_contexts
from sae_lightning.data.activations import capture_activations
from sae_lightning.formats import save_saelens
from sae_lightning.report import Dashboards, load_report, write_dashboards
from sae_lightning.report.__main__ import main as rerender
from sae_lightning.report.data import tokens_view
from sae_lightning.report.html import script_json
from sae_lightning.report.prompts import analyse_prompt, prompt_tokens
from sae_lightning.saes import ReLUSAE

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.mlp.hook_post"
META = {"model_name": "toy-1l", "hook_name": HOOK, "context_size": 32, "prepend_bos": True}
XSS = "<img src=x onerror=alert(1)>"
FEATURES = [0, 1, 2, 3, 5, 8]
PROMPT = f"import os\n{XSS}\nfor x in y:\n    pass"
ALL_CRITERIA = "[top_activations,specificity,sensitivity,downstream,not_a_neuron,universality]"


def random_sae(seed: int) -> ReLUSAE:
    torch.manual_seed(seed)
    sae = ReLUSAE(1024, 32)
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.1)
        sae.b_enc.normal_(0, 0.05)
    return sae.eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real analysis (every criterion, a prompt) of a small SAE on a tiny corpus whose
    documents include an HTML payload."""
    tmp = tmp_path_factory.mktemp("dash")
    corpus = tmp / "corpus"
    corpus.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    (corpus / "00_shlex.py").write_text((stdlib / "shlex.py").read_text())
    (corpus / "01_xss.py").write_text(f"# {XSS}\nx = '{XSS}'\n" * 40)
    save_saelens(random_sae(0), tmp / "sae", META)
    save_saelens(random_sae(1), tmp / "other", META)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "analyze",
            overrides=[
                f"sae_path={tmp / 'sae'}",
                f"compare_with={tmp / 'other'}",
                f"paths.output_dir={tmp / 'out'}",
                f"criteria={ALL_CRITERIA}",
                f"data.source.corpus={corpus}",
                "data.split=train",
                "tokens=2048",
                f"features={FEATURES}",
                "+trainer.enable_progress_bar=false",
                f"prompt=[{json.dumps(PROMPT)}]",
            ],
        )
    analyze(cfg)
    folder = tmp / "out" / "report"
    return folder, load_report(folder), cfg


def test_every_feature_has_a_page_and_the_index_rows_match_the_report(run):
    folder, report, _ = run
    assert sorted(int(p.stem) for p in (folder / "features").glob("*.html")) == FEATURES
    assert (folder / "assets" / "plotly.min.js").stat().st_size > 1_000_000
    index = (folder / "index.html").read_text()
    rows = re.findall(r'<tr><td data-v="(\d+)"><a href="features/\1\.html">.*?</tr>', index, re.S)
    assert [int(r) for r in rows] == FEATURES
    for f in FEATURES:
        top = report["features"][str(f)]["top_activations"]
        row = re.search(rf'<tr><td data-v="{f}">.*?</tr>', index, re.S).group(0)
        assert f'data-v="{top["density"]}"' in row and f'data-v="{top["max_activation"]}"' in row
        spec = report["features"][str(f)]["specificity"]
        assert f'data-v="{spec["specificity"]}"' in row or spec["specificity"] is None
    assert "no network" not in index and "http" not in index.split("<main>")[1]


def test_window_activations_agree_with_a_direct_encoding(run, embedded_model):
    folder, report, cfg = run
    sae, _ = load_sae(Path(report["metadata"]["source"]))
    contexts = load_contexts(cfg, embedded_model, 32)
    checked = 0
    for f in FEATURES:
        top = report["features"][str(f)]["top_activations"]
        for e in top["top_examples"][:3] + top["quantile_samples"][0]["examples"][:1]:
            assert e["acts"][e["highlight"]] == pytest.approx(e["activation"], abs=1e-3)
            start = e["position"] - e["highlight"]
            with torch.no_grad():
                row = contexts[e["context"]][None]
                acts = sae.encode(capture_activations(embedded_model, row, HOOK))[0, :, f]
            want = acts[start : start + len(e["tokens"])].tolist()
            assert e["acts"] == pytest.approx(want, abs=1e-3)
            checked += 1
        ablation = report["features"][str(f)]["downstream"]["ablation"]
        if ablation:
            with torch.no_grad():
                row = contexts[ablation["contexts"][0]][None]
                acts = sae.encode(capture_activations(embedded_model, row, HOOK))[0, :, f]
            want = acts[: len(ablation["top_context_tokens"])].tolist()  # the shown prefix
            assert ablation["top_context_acts"] == pytest.approx(want, abs=1e-3)
            checked += 1
    assert checked > len(FEATURES) * 3


def test_feature_page_numbers_highlighting_and_sections(run):
    folder, report, _ = run
    f = FEATURES[0]
    page = (folder / "features" / f"{f}.html").read_text()
    top = report["features"][str(f)]["top_activations"]
    ex = top["top_examples"][0]
    alpha = f"{min(ex['activation'] / top['max_activation'], 1.0):.2f}"
    assert alpha == "1.00"  # the top example is the max
    assert re.search(
        rf'class="t hl" style="--a:{alpha}" title="[^"]*act {ex["activation"]:.4g}', page
    )
    for section in ("summary", "verdicts", "specificity", "top-activations", "quantiles"):
        assert f'<section id="{section}">' in page
    for section in ("logits", "ablation", "neuron", "universality"):
        assert f'<section id="{section}">' in page
    neuron = report["features"][str(f)]["not_a_neuron"]["neuron"]
    assert f"neuron <b>{neuron}</b>" in page
    match = report["features"][str(f)]["universality"]["best_match"]
    assert f"feature <b>{match}</b>" in page
    down = report["features"][str(f)]["downstream"]
    assert f"<code>{down['top_tokens'][0]}</code>".replace("\n", "↵") in page or "&" in page


def test_tokens_view_colours_by_activation_and_underlines_by_delta():
    view = tokens_view(
        ["a", "\n", "c", "d"], [2.0, 0.0, 8.0, 1.0], 4.0, deltas=[None, -1.0, 0.5, 0.01]
    )
    assert [v[0] for v in view] == ["a", "↵", "c", "d"]
    assert [v[2] for v in view] == ["0.50", "", "1.00", "0.25"]
    assert [v[3] for v in view] == ["", "fell3", "rose2", ""]  # 0.01 < 5% of the largest
    assert "Δlogp -1.000" in view[1][1] and "act 8" in view[2][1]
    only = tokens_view(["a", "b"], None, 2.0, highlight=1, highlight_act=1.0)
    assert [v[2] for v in only] == ["", "0.50"] and only[1][3] == "hl"


def synthetic_report() -> dict:
    ex = {"activation": 2.0, "context": 0, "position": 1, "tokens": ["a", XSS, "</script>"]}
    per = {
        "top_activations": {
            "density": 0.5, "max_activation": 2.0, "auto_proxy": [XSS], "verdict": None,
            "top_examples": [ex | {"highlight": 1}], "quantile_samples": [],
        },
        "specificity": {
            "proxy": f"tokens {{'{XSS}'}}", "specificity": 0.9, "verdict": True,
            "histogram": {"edges": [0, 1, 2], "proxy_counts": [1, 2], "other_counts": [3, 0],
                          "llr": [-1.0, 2.0]},
        },
        "downstream": {"top_tokens": [f"</script>{XSS}"], "top_values": [1.0], "verdict": None,
                       "bottom_tokens": [], "bottom_values": [],
                       "histogram": {"edges": [0, 1], "counts": [5]}},
    }  # fmt: skip
    return {"metadata": {"model_name": XSS, "criteria": list(per)}, "features": {"7": per}}


def test_every_token_string_is_escaped(tmp_path):
    write_dashboards(synthetic_report(), tmp_path)
    for page in (tmp_path / "index.html", tmp_path / "features" / "7.html"):
        html = page.read_text()
        assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    html = (tmp_path / "features" / "7.html").read_text()
    # plotly.js, two figure blocks, dashboard.js: no other script element, none cut short
    assert html.count("<script") == html.count("</script>") == 4
    assert "&lt;/script&gt;" in html
    html = (tmp_path / "features" / "7.html").read_text()
    block = re.search(r'id="fig-specificity">(.*?)</script>', html, re.S).group(1)
    assert "<" not in block and "\\u003cimg" in block
    assert XSS in json.loads(block)["layout"]["title"]["text"]  # the data itself is intact
    assert str(script_json("</script>&")) == '"\\u003c/script\\u003e\\u0026"'


def test_missing_or_corrupt_reports_and_unknown_features_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "criteria.json"))):
        load_report(tmp_path)
    (tmp_path / "criteria.json").write_text('{"metadata": {}, "features": {')
    with pytest.raises(ValueError, match="corrupt JSON"):
        load_report(tmp_path)
    (tmp_path / "criteria.json").write_text('{"metadata": {}}')
    with pytest.raises(ValueError, match=r"lacks the keys \['features'\]"):
        load_report(tmp_path)
    with pytest.raises(ValueError, match=r"features \[999\] are not in the report.*\[7\]"):
        write_dashboards(synthetic_report(), tmp_path, features=[999])


def test_prompt_view_numbers_match_direct_computation(run, embedded_model):
    folder, report, _ = run
    sae, _ = load_sae(Path(report["metadata"]["source"]))
    maxima = {int(k): v["top_activations"]["max_activation"] for k, v in report["features"].items()}
    got = analyse_prompt(PROMPT, sae, embedded_model, HOOK, maxima, n_ablate=6)
    tokens = prompt_tokens(embedded_model, PROMPT)
    with torch.no_grad():
        acts = sae.encode(capture_activations(embedded_model, tokens[None], HOOK))[0]  # [pos, d]
    p = 3
    want = acts[p].topk(5)
    assert [e["feature"] for e in got["per_token"][p]["features"]] == [
        int(i) for v, i in zip(want.values, want.indices, strict=True) if v > 0
    ]
    first = got["by_activation"][0]
    assert first["activation"] == pytest.approx(float(acts[1:].max()), rel=1e-5)
    for e in got["by_quantile"]:
        peak = float(acts[1:, e["feature"]].max())
        assert e["quantile"] == pytest.approx(peak / maxima[e["feature"]], rel=1e-5)
    # loss effect of one feature, ablated alone and unbatched
    e = got["by_loss"][0]
    f = e["feature"]

    def remove(x, hook):
        return x - sae.encode(x)[..., f : f + 1] * sae.W_dec[f]

    with torch.no_grad():
        row = tokens[None]
        logp = embedded_model(row)[0, :-1].log_softmax(-1)
        clean = -logp.gather(-1, row[0, 1:, None]).mean()
        ablated = embedded_model.run_with_hooks(row, fwd_hooks=[(HOOK, remove)])[0, :-1]
        loss = -ablated.log_softmax(-1).gather(-1, row[0, 1:, None]).mean()
    assert got["clean_loss"] == pytest.approx(float(clean), abs=1e-4)
    assert e["loss_effect"] == pytest.approx(float(loss - clean), abs=1e-4)
    prompts_html = (folder / "prompts.html").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in prompts_html and "<img" not in prompts_html


def test_tensorboard_gets_the_report_path_and_the_cli_rerenders(run, tmp_path):
    folder, _, _ = run
    events = EventAccumulator(str(folder.parent / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert "report/dashboards/text_summary" in events.Tags()["tensors"]
    text = events.Tensors("report/dashboards/text_summary")[0].tensor_proto.string_val[0].decode()
    assert f"file://{(folder / 'index.html').resolve()}" in text
    rerender([str(folder / "criteria.json"), "--out", str(tmp_path), "--features", "1", "3"])
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == ["1.html", "3.html"]
    assert (tmp_path / "index.html").read_text() == Dashboards(
        load_report(folder), tmp_path
    ).index_page()
