"""Entry point of the `meds_layout` rule: mEDS 0.4: validate EHR event tables, and lay the ingested parts out as a MEDS dataset folder."""

from __future__ import annotations

import argparse
import logging
import sys

from mmhealth.split.meds_layout import write_meds_layout


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", required=True, help="results/ingest/ehr/part-*.parquet")
    parser.add_argument("--subjects", required=True, help="results/splits/subjects.parquet")
    parser.add_argument("--out-dir", required=True, help="results/meds")
    args = parser.parse_args(argv)
    write_meds_layout(args.parts, args.subjects, args.out_dir)


if __name__ == "__main__":
    main()
