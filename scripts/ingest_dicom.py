"""Entry point of the `ingest_dicom` rule: ingest DICOM: files at any depth -> series checked and sorted along the slice normal -> one row per slice."""

from __future__ import annotations

import argparse

from mmhealth.core.pseudonym import load_or_create_salt
from mmhealth.ingest import common
from mmhealth.ingest.dicom import ingest_dicom_shard


def main(argv: list[str] | None = None) -> None:
    common.configure_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_shard_arguments(parser, "folder of DICOM files (any depth)", "DICOM files (under --input)")
    parser.add_argument("--image-size", type=int, default=64, help="output rows = cols")
    args = parser.parse_args(argv)
    ingest_dicom_shard(args.input, args.files, load_or_create_salt(args.salt_file),
                       common.ShardJob(args.shard, args.shards), args.out_part, args.quarantine, args.manifest,
                       args.image_size, args.source_map)


if __name__ == "__main__":
    main()
