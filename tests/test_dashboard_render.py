"""Rendering without a model: token highlighting, escaping of every token string, errors."""

from __future__ import annotations

import json
import re

import pytest

from sae_lightning.report import load_report, write_dashboards
from sae_lightning.report.data import tokens_view
from sae_lightning.report.html import script_json

XSS = "<img src=x onerror=alert(1)>"


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
