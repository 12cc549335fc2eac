"""Entry point of the `leakage_audit` rule: leakage audit of the subject split: nothing of one subject, series or sequence may sit in two splits."""

from __future__ import annotations

import argparse
import logging
import sys

from mmhealth.split.leakage_audit import ON_LEAK, run_audit


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", required=True, help="results/splits/subjects.parquet")
    parser.add_argument("--image-parts", nargs="*", default=[], help="results/ingest/image/part-*.parquet")
    parser.add_argument("--dna-parts", nargs="*", default=[], help="results/ingest/dna/part-*.parquet")
    parser.add_argument("--on-leak", choices=ON_LEAK, default="fail", help="fail the job or only warn")
    parser.add_argument("--out", required=True, help="results/splits/audit.json")
    parser.add_argument("--failed-out", help="results/splits/audit.failed.json: a failed audit's report, kept "
                        "(Snakemake deletes --out of a failed job); removed when the audit passes")
    args = parser.parse_args(argv)
    run_audit(args.subjects, args.image_parts, args.dna_parts, args.out, args.on_leak, args.failed_out)


if __name__ == "__main__":
    main()
