"""Entry point of the `predict_report` rule: one page per batch of new data: what was ingested and refused, and each task's predictions at a glance."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mmhealth.report.predict_page import log, write_predict_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", required=True, help="the batch's name under config `predict`")
    parser.add_argument("--predictions", required=True, nargs="+", type=Path,
                        help="predict/<batch>/<task>/predictions.parquet files")
    parser.add_argument("--manifests", nargs="*", default=[], type=Path, help="the batch's ingest manifests")
    parser.add_argument("--eval-reports", nargs="*", default=[], type=Path, help="eval/<task>/report.html files")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    write_predict_report(args.batch, {p.parent.name: p for p in args.predictions}, args.manifests,
                         {p.parent.name: p for p in args.eval_reports}, args.out)
    log.info("report of batch %s written to %s", args.batch, args.out)


if __name__ == "__main__":
    main()
