"""Entry point of the `data_accounting` rule: records in / out / quarantined per modality with the top
reasons, subjects per split, and per task the units and classes per split and the labels left unused."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mmhealth.core.job_files import path_map
from mmhealth.report.accounting import write_accounting


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifests-json", required=True, help='JSON: {"<modality>": "ingest/<m>/manifest.json"}')
    parser.add_argument("--quarantines-json", required=True, help='JSON: {"<modality>": "ingest/<m>/quarantine.parquet"}')
    parser.add_argument("--subjects", required=True, type=Path, help="splits/subjects.parquet")
    parser.add_argument("--labels-json", required=True, help='JSON: {"<task>": "splits/labels/<task>.parquet"}')
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    write_accounting(path_map(args.manifests_json), path_map(args.quarantines_json), args.subjects,
                     path_map(args.labels_json), args.out)


if __name__ == "__main__":
    main()
