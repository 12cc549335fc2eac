"""Entry point of the `ingest_fasta` rule: ingest FASTA: records from *.fa/*.fasta/*.fna (optionally .gz, any depth) -> fixed-size sequence windows."""

from __future__ import annotations

import argparse

from mmhealth.core.pseudonym import load_or_create_salt
from mmhealth.ingest import common
from mmhealth.ingest.fasta import N_POLICIES, WindowParams, ingest_fasta_shard


def main(argv: list[str] | None = None) -> None:
    common.configure_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_shard_arguments(parser, "folder of FASTA files (any depth)", "FASTA files (under --input)")
    parser.add_argument("--subject-regex", required=True, help="regex on record ids, with (?P<subject_id>)")
    parser.add_argument("--window", type=int, default=256, help="bases per window")
    parser.add_argument("--stride", type=int, default=256, help="bases between window starts")
    parser.add_argument("--max-n-fraction", type=float, default=0.5, help="drop windows with more N (drop)")
    parser.add_argument("--n-policy", choices=N_POLICIES, default="drop",
                        help="drop: drop N-rich windows; keep: keep all; mask: keep all, lower-case -> N")
    args = parser.parse_args(argv)
    params = WindowParams(args.subject_regex, args.window, args.stride, args.max_n_fraction, args.n_policy)
    ingest_fasta_shard(args.input, args.files, load_or_create_salt(args.salt_file),
                       common.ShardJob(args.shard, args.shards), params, args.out_part, args.quarantine,
                       args.manifest, args.source_map)


if __name__ == "__main__":
    main()
