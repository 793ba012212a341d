"""Write the HTML dashboards of an analysis: ``index.html``, ``features/<i>.html``, assets.

One jinja2 :class:`~jinja2.Environment` (autoescape on: every token string is escaped),
templates compiled once; figures go into each page as JSON data, drawn by plotly.js, which
is copied once into ``assets/`` so the folder works from ``file://`` with no network.
Every file is written through :class:`~sae_lightning.report.files.ReportFiles`: never
through a symlink, never outside the report folder.

Example:
    >>> write_dashboards("outputs/analysis/2026-01-01/12-00-00/report")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from sae_lightning.report.crosscoder import feature_line, report_section
from sae_lightning.report.data import (
    check_features,
    criteria_of,
    fmt,
    headlines,
    load_report,
    shown,
)
from sae_lightning.report.files import ReportFiles
from sae_lightning.report.views import feature_view, index_rows

log = logging.getLogger(__name__)

ASSETS = ("dashboard.js", "dashboard.css")
ASSET_PATHS = tuple(f"assets/{name}" for name in ("plotly.min.js", *ASSETS))
_JSON_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def script_json(value: Any) -> Markup:
    """``value`` as JSON safe inside ``<script type="application/json">``: ``<``, ``>`` and
    ``&`` become ``\\u003c`` etc., so no string (``</script>``, ``<!--``) can end the block."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return Markup(text.translate(_JSON_ESCAPES))


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The one jinja2 environment (autoescaping every ``.j2`` template)."""
    env = Environment(
        loader=PackageLoader("sae_lightning.report", "templates"),
        autoescape=select_autoescape(["html", "j2"], default_for_string=True, default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(script_json=script_json, fmt=fmt, shown=shown)
    return env


def write_assets(out: str | Path) -> Path:
    """Copy plotly.js and the dashboards' script and stylesheet into ``out/assets``."""
    import plotly.offline

    source = plotly.offline.get_plotlyjs()
    package = resources.files("sae_lightning.report") / "templates"
    with ReportFiles(out) as files:
        files.check(ASSET_PATHS)
        if files.size("assets/plotly.min.js") != len(source.encode()):
            files.write("assets/plotly.min.js", source)
        for name in ASSETS:
            files.write(f"assets/{name}", (package / name).read_text())
    return Path(out) / "assets"


class Dashboards:
    """Renders the pages of one report (loaded once; templates compiled once).

    Args:
        report: A ``criteria.json`` dict (see :func:`load_report`).
        out: The report folder: pages go to ``out/index.html``, ``out/features/<i>.html``.
    """

    def __init__(self, report: dict[str, Any], out: str | Path) -> None:
        self.report, self.out = report, Path(out)
        self.criteria = criteria_of(report)
        self.heads = headlines(report, self.criteria)
        env = environment()
        self.feature_template = env.get_template("feature.html.j2")
        self.index_template = env.get_template("index.html.j2")
        self.keys = list(report["features"])
        self.position = {int(k): i for i, k in enumerate(self.keys)}

    def feature_page(self, index: int) -> str:
        """The HTML of ``features/<index>.html``."""
        key = self.keys[self.position[index]]
        view = feature_view(index, self.report["features"][key], self.heads)
        i = self.position[index]
        prev_key = self.keys[i - 1] if i > 0 else None
        next_key = self.keys[i + 1] if i + 1 < len(self.keys) else None
        return self.feature_template.render(
            f=view,
            xc=feature_line(self.report, index),  # a crosscoder's relative decoder norm
            meta=self.report["metadata"],
            prev=prev_key,
            next=next_key,
            root="../",
        )

    def index_page(self) -> str:
        """The HTML of ``index.html``: the sortable, filterable scorecard."""
        rows = index_rows(self.report, self.criteria, self.heads)
        return self.index_template.render(
            rows=rows,
            criteria=self.criteria,
            heads=self.heads,
            summaries=self.report.get("criteria", {}),
            crosscoder=Markup(section) if (section := report_section(self.report)) else None,
            meta=self.report["metadata"],
            root="",
        )

    def prompts_page(self, analyses: list[dict[str, Any]]) -> str:
        """The HTML of ``prompts.html`` (``analyses`` from :func:`analyse_prompts`)."""
        template = environment().get_template("prompts.html.j2")
        return template.render(prompts=analyses, meta=self.report["metadata"], root="")

    def write_prompts(self, analyses: list[dict[str, Any]]) -> Path:
        with ReportFiles(self.out) as files:
            files.check(["prompts.html", *ASSET_PATHS])
            write_assets(self.out)
            return files.write("prompts.html", self.prompts_page(analyses))

    def write_features(self, features: list[int]) -> int:
        """Write ``features/<i>.html`` for each of ``features``; returns how many."""
        names = [f"features/{f}.html" for f in features]
        with ReportFiles(self.out) as files:
            files.check(names)
            for f, name in zip(features, names, strict=True):
                files.write(name, self.feature_page(f))
        return len(features)

    def write_index(self) -> Path:
        with ReportFiles(self.out) as files:
            files.check(["index.html"])
            return files.write("index.html", self.index_page())


def write_dashboards(
    report: dict[str, Any] | str | Path,
    out: str | Path | None = None,
    features: list[int] | None = None,
) -> Path:
    """Write the dashboards of a report; returns the path of ``index.html``.

    Args:
        report: A ``criteria.json`` path, the folder holding it, or its dict.
        out: The report folder to write into; None: the folder of ``criteria.json``.
        features: Feature pages to write; None: every analysed feature.

    Raises:
        ValueError: If a feature is not in the report, or ``out`` is None for a dict.
        FileNotFoundError: If the ``criteria.json`` path does not exist.
        UnsafeReportPath: If ``features/``, ``assets/`` or a page in ``out`` is a symlink
            (checked before anything is written).
    """
    if not isinstance(report, dict):
        path = Path(report)
        report = load_report(path)
        out = out if out is not None else (path if path.is_dir() else path.parent)
    if out is None:
        raise ValueError("write_dashboards(report=<dict>) needs out=, the folder to write into")
    chosen = check_features(report, features)
    dash = Dashboards(report, out)
    with ReportFiles(dash.out) as files:  # refuse before writing anything
        files.check(["index.html", *ASSET_PATHS, *(f"features/{f}.html" for f in chosen)])
    write_assets(dash.out)
    n = dash.write_features(chosen)
    index = dash.write_index()
    log.debug("dashboards: %s (%d feature pages)", index, n)  # analyze.py logs the published path
    return index
