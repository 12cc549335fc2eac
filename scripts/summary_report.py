"""Entry point of the `summary_report` rule: one summary page over every task: sizes, model and baseline AUROC/AUPRC with CIs, links to task reports."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from mmhealth.report.summary import log, write_summary_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the summary report over all tasks (HTML).")
    parser.add_argument("--metrics", required=True, nargs="*", type=Path, help="eval/<task>/metrics.json files")
    parser.add_argument("--accounting", type=Path, help="results/accounting.json (the Data section)")
    parser.add_argument("--out", required=True, type=Path, help="e.g. results/report.html")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    accounting = json.loads(args.accounting.read_text()) if args.accounting else None
    write_summary_report(args.metrics, args.out, accounting)
    log.info("summary of %d tasks written to %s", len(args.metrics), args.out)


if __name__ == "__main__":
    main()
