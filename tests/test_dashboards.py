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
from sae_lightning.analysis.reader import Reader
from sae_lightning.analysis.run import analyze, load_contexts
from sae_lightning.formats import save_saelens
from sae_lightning.hooks import capture_activations
from sae_lightning.report import Dashboards, load_report
from sae_lightning.report.__main__ import main as rerender
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
    with torch.no_grad():
        encoded = sae.encode(capture_activations(embedded_model, contexts, HOOK))  # [n, pos, d]
    encoded[:, 0] = 0.0  # BOS (position 0) is not analysed: windows show it with activation 0
    checked = 0
    for f in FEATURES:
        top = report["features"][str(f)]["top_activations"]
        for e in top["top_examples"][:3] + top["quantile_samples"][0]["examples"][:1]:
            assert e["acts"][e["highlight"]] == pytest.approx(e["activation"], abs=1e-3)
            start = e["position"] - e["highlight"]
            acts = encoded[e["context"], :, f]
            want = acts[start : start + len(e["tokens"])].tolist()
            assert e["acts"] == pytest.approx(want, abs=1e-3)
            checked += 1
        ablation = report["features"][str(f)]["downstream"]["ablation"]
        if ablation:
            acts = encoded[ablation["contexts"][0], :, f]
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


def test_prompt_view_numbers_match_direct_computation(run, embedded_model):
    folder, report, _ = run
    sae, _ = load_sae(Path(report["metadata"]["source"]))
    maxima = {int(k): v["top_activations"]["max_activation"] for k, v in report["features"].items()}
    got = analyse_prompt(PROMPT, sae, Reader(embedded_model, HOOK), maxima, n_ablate=6)
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
        removed = sae.encode(x)[..., f : f + 1] * sae.W_dec[f]
        removed[:, 0] = 0.0  # BOS is not analysed: left as it is
        return x - removed

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


# ---------------------------------------------------------------- in a browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "dashboards"  # git-ignored
BROWSER_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, path: Path):
    """The page at ``path`` (file://), with what went wrong on it: console errors, uncaught
    exceptions, dialogs (a script ran), and requests for anything but local files."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: dict[str, list[str]] = {"errors": [], "requests": [], "dialogs": []}
    page.on("console", lambda m: m.type == "error" and problems["errors"].append(m.text))
    page.on("pageerror", lambda e: problems["errors"].append(str(e)))
    page.on("dialog", lambda d: (problems["dialogs"].append(d.message), d.dismiss()))
    page.on(
        "request",
        lambda r: r.url.startswith(("file://", "data:")) or problems["requests"].append(r.url),
    )
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, problems


def test_index_sorts_filters_and_links_offline(run, browser):
    folder, report, _ = run
    page, problems = open_page(browser, folder / "index.html")
    rows = page.locator("#scorecard tbody tr")
    assert rows.count() == len(FEATURES) and page.locator("#summary").count() == 1
    density = page.locator("#scorecard th").nth(1)
    density.click()
    assert density.get_attribute("aria-sort") == "descending"
    values = [float(v) for v in page.locator("#scorecard tbody tr td:nth-child(2)").evaluate_all(
        "cells => cells.map(c => c.getAttribute('data-v'))")]  # fmt: skip
    want = sorted(report["features"][str(f)]["top_activations"]["density"] for f in FEATURES)
    assert values == want[::-1]
    density.click()
    assert density.get_attribute("aria-sort") == "ascending"
    page.fill("#filter", "no-row-has-this")
    assert page.locator("#scorecard tbody tr:visible").count() == 0
    assert page.inner_text("#shown") == f"0 of {len(FEATURES)} shown"
    page.fill("#filter", "")
    page.screenshot(path=str(ARTIFACTS / "index.png"), full_page=True)
    page.locator(f'a[href="features/{FEATURES[1]}.html"]').click()
    page.wait_for_load_state("load")
    assert page.url.endswith(f"features/{FEATURES[1]}.html")
    assert problems == {"errors": [], "requests": [], "dialogs": []}


@pytest.mark.parametrize("feature", [FEATURES[0], FEATURES[2]])
def test_feature_pages_draw_every_section_offline(run, browser, feature):
    folder, report, _ = run
    page, problems = open_page(browser, folder / "features" / f"{feature}.html")
    for section in ("summary", "verdicts", "specificity", "top-activations", "quantiles"):
        assert page.locator(f"section#{section}").is_visible()
    for figure in ("specificity", "logits"):  # plotly drew the figure from its JSON block
        assert page.locator(f"#{figure} .plot svg.main-svg").count() >= 1
    top = report["features"][str(feature)]["top_activations"]["top_examples"]
    assert page.locator("#top-activations tr").count() == len(top)
    assert (
        page.locator("#top-activations .t.hl")
        .first.get_attribute("title")
        .endswith(f"act {top[0]['activation']:.4g}")
    )
    if report["features"][str(feature)]["downstream"]["ablation"]:
        assert page.locator("#ablation .t").count() > 0
    assert page.locator("#neuron b").first.inner_text() != ""
    assert "best match" in page.inner_text("#universality")
    page.screenshot(path=str(ARTIFACTS / f"feature-{feature}.png"), full_page=True)
    assert problems == {"errors": [], "requests": [], "dialogs": []}


def test_an_html_token_shows_as_text_and_runs_nothing(run, browser, tmp_path):
    folder, report, _ = run
    page, problems = open_page(browser, folder / "prompts.html")
    assert XSS in page.inner_text("#prompt-0 .prompt-text")  # the literal text, visible
    assert page.locator("img").count() == 0
    page.screenshot(path=str(ARTIFACTS / "prompts.png"), full_page=True)
    # one token whose whole text is the payload, on a feature page
    f = str(FEATURES[0])
    example = report["features"][f]["top_activations"]["top_examples"][0]
    example["tokens"][example["highlight"]] = XSS
    Dashboards(report, tmp_path).write_features([FEATURES[0]])
    (tmp_path / "assets").symlink_to(folder / "assets")
    page2, problems2 = open_page(browser, tmp_path / "features" / f"{f}.html")
    assert page2.locator("#top-activations .t.hl").first.inner_text() == XSS
    assert page2.locator("img").count() == 0
    assert problems == problems2 == {"errors": [], "requests": [], "dialogs": []}
    (tmp_path / "raw.html").write_text(f"<p>{XSS}</p>")  # control: unescaped, it would run
    _, caught = open_page(browser, tmp_path / "raw.html")
    assert caught["dialogs"] == ["1"]
