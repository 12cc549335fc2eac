"""Entry point of the `subject_split` rule: subject-level train/val/test split shared by every modality and task."""

from __future__ import annotations

import argparse
import json
import logging

from mmhealth.split.assignment import read_assignments
from mmhealth.split.subject_split import write_subject_split


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", nargs="+", required=True, help="ingest part-*.parquet of every modality")
    parser.add_argument("--fractions", required=True, help='JSON like {"train": 0.8, "val": 0.1, "test": 0.1}')
    parser.add_argument("--split-files", nargs="+", required=True,
                        help="every shard's staged assignment of labelled subjects (split/stratify.py)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    fractions = json.loads(args.fractions)
    write_subject_split(args.parts, fractions, args.out, read_assignments(args.split_files, fractions))


if __name__ == "__main__":
    main()
