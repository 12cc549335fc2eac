"""Entry point of the `ingest_manifest` rule: one modality's manifest (counts summed over the shard jobs) and
its quarantine table (their refused records concatenated)."""

from __future__ import annotations

import argparse

from mmhealth.ingest.common import configure_logging, merge_manifests


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifests", nargs="+", required=True, help="manifest of every shard job")
    parser.add_argument("--quarantines", nargs="+", required=True, help="quarantine of every shard job")
    parser.add_argument("--out-manifest", required=True, help="results/ingest/<modality>/manifest.json")
    parser.add_argument("--out-quarantine", required=True, help="results/ingest/<modality>/quarantine.parquet")
    parser.add_argument("--max-quarantined-fraction", type=float, default=None,
                        help="fail when more than this fraction of the records was quarantined (config "
                             "ingest.max_quarantined_fraction.<modality>)")
    args = parser.parse_args(argv)
    merge_manifests(args.manifests, args.quarantines, args.out_manifest, args.out_quarantine,
                    args.max_quarantined_fraction)


if __name__ == "__main__":
    main()
