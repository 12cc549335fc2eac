"""Entry point of the `task_labels` rule: a task's label file (raw ids) -> labels on pseudonyms with each subject's split."""

from __future__ import annotations

import argparse
import logging

from mmhealth.core.pseudonym import load_or_create_salt
from mmhealth.split.task_labels import write_task_labels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--subjects", required=True)
    parser.add_argument("--salt-file", required=True)
    parser.add_argument("--modalities", required=True, help="comma-separated modalities of the task")
    parser.add_argument("--min-subjects-per-class", type=int, default=0, help="config audit.min_subjects_per_class")
    parser.add_argument("--on-small-class", choices=["warn", "fail"], default="warn", help="config audit.on_small_class")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    write_task_labels(args.labels, args.subjects, load_or_create_salt(args.salt_file), args.modalities.split(","),
                      args.out, args.min_subjects_per_class, args.on_small_class)


if __name__ == "__main__":
    main()
