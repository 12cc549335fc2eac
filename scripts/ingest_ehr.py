"""Entry point of the `ingest_ehr` rule: ingest EHR CSV tables -> MEDS events (subject_id, time, code, numeric_value, text_value)."""

from __future__ import annotations

import argparse

from mmhealth.core.pseudonym import load_or_create_salt
from mmhealth.ingest import common
from mmhealth.ingest.ehr import ingest_ehr_shard, load_tables_json


def main(argv: list[str] | None = None) -> None:
    common.configure_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables-json", required=True,
                        help="inputs.ehr of the config, each table with a 'staged' CSV: JSON text or file")
    common.add_shard_arguments(parser, "", None)
    args = parser.parse_args(argv)
    ingest_ehr_shard(load_tables_json(args.tables_json), load_or_create_salt(args.salt_file),
                     common.ShardJob(args.shard, args.shards), args.out_part, args.quarantine, args.manifest,
                     common.privacy_params(args.privacy_json), args.source_map)


if __name__ == "__main__":
    main()
