"""Rerender the dashboards of an existing analysis.

``python -m sae_lightning.report REPORT_DIR [--features 3 17 ...] [--out DIR]`` reads
``REPORT_DIR/criteria.json`` (or a ``criteria.json`` path) and writes ``index.html``,
``features/<i>.html`` and ``assets/`` (into ``--out``, default the report's folder). It
writes only plain files inside that folder: a symlinked ``features/``, ``assets/`` or page
is refused before anything is written. A mistake (a missing report, an unknown feature, a
symlink) ends with one line and exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import time

from sae_lightning.cli import user_errors
from sae_lightning.report.html import write_dashboards


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sae_lightning.report", description=__doc__)
    parser.add_argument("report", help="a report/ folder or its criteria.json")
    parser.add_argument("--features", type=int, nargs="+", help="pages to write (default: all)")
    parser.add_argument("--out", help="folder to write into (default: the report's folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    with user_errors("python -m sae_lightning.report"):
        index = write_dashboards(args.report, args.out, args.features)
    logging.getLogger(__name__).info("wrote %s in %.1f s", index, time.perf_counter() - start)


if __name__ == "__main__":
    main()
