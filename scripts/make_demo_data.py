"""Entry point of the `make_demo_data` rule: deterministic fake hospital exports (DICOM CT, FASTA, EHR CSVs, labels) for demos and tests."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from mmhealth.demo.data import generate_demo, log, write_demo_salt
from mmhealth.demo.phi_corpus import plant_phi


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (e.g. demo/raw)")
    parser.add_argument("--subjects", type=int, default=200, help="number of fake patients")
    parser.add_argument("--unlabeled", type=int, default=0,
                        help="more fake patients with exports but no labels (data for pretraining)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files")
    parser.add_argument("--image-size", type=int, default=64, help="rows = cols of each CT slice")
    parser.add_argument("--min-slices", type=int, default=8, help="fewest slices in a series")
    parser.add_argument("--max-slices", type=int, default=16, help="most slices in a series")
    parser.add_argument("--salt-file", type=Path, help="also write a seed-derived demo pseudonym key here")
    parser.add_argument("--plant-phi", action="store_true",
                        help="plant identifiers where real exports hide them (a privacy audit corpus, "
                             "strings listed in phi_audit/planted.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = generate_demo(args.out, args.subjects, args.seed, args.image_size, (args.min_slices, args.max_slices),
                            args.unlabeled)
    log.info("demo data written to %s: %s", args.out, json.dumps(summary, sort_keys=True))
    if args.salt_file:
        write_demo_salt(args.salt_file, args.seed)
    if args.plant_phi:
        plant_phi(args.out)


if __name__ == "__main__":
    main()
