"""HTML dashboards of an analysis: scorecard, feature pages, prompt-centric pages.

:func:`write_dashboards` renders ``report/index.html`` and ``report/features/<i>.html`` from
``criteria.json``; :func:`write_prompts` writes ``report/prompts.html``. Rerender an
existing report with ``python -m sae_lightning.report <report_dir>``.
"""

from sae_lightning.report.data import load_report
from sae_lightning.report.html import Dashboards, write_dashboards

__all__ = ["Dashboards", "load_report", "write_dashboards"]
