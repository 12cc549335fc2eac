"""One CSV reader for the raw-file index and the EHR ingest: every quirk of a real export is read the same way
by the index (which cuts the table into per-shard staged CSVs) and by the ingest (shard jobs on the staged
CSVs, and a whole-table run), and nothing is dropped without a quarantine row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from mmhealth.core.parquet_io import read_tables
from mmhealth.core.pseudonym import load_or_create_salt, shard_of, subject_pseudonym
from mmhealth.ingest import common, ehr_csv, raw_index
from mmhealth.ingest.ehr import EhrInputError, ingest_ehr, ingest_ehr_shard

SHARDS = 3
PATIENTS = {"path": "patients.csv", "subject_id": "patient_id", "events": [{"code": "SEX//{sex}"}]}
LABS = {"path": "labs.csv", "subject_id": "patient_id", "time": "charttime",
        "events": [{"code": "LAB//{test}", "numeric_value": "value"}]}
NOTES = {"path": "notes.csv", "subject_id": "patient_id", "time": "charttime",
         "events": [{"code": "NOTE", "text_value": "text"}]}


def table(tmp_path: Path, spec: dict, data: bytes, **extra) -> dict:
    (tmp_path / spec["path"]).write_bytes(data)
    return {**spec, "path": str(tmp_path / spec["path"]), **extra}


def index_and_ingest(tmp_path: Path, tables: list[dict], salt: Path | None = None) -> tuple[dict, pd.DataFrame,
                                                                                          list[tuple]]:
    """The workflow's way: the raw index stages each table per shard, one job per shard, then the merge.
    Checks that a whole-table run gives the same events and quarantine; returns manifest, events, quarantine."""
    salt = salt or tmp_path / "salt"
    index = raw_index.build_index({"ehr": tables}, str(salt), SHARDS, str(tmp_path / "staging"))
    key = load_or_create_salt(salt)
    jobs = tmp_path / "jobs"
    for k in range(SHARDS):
        ingest_ehr_shard(raw_index.staged_tables(tables, index.ehr[k]), key, common.ShardJob(k, SHARDS),
                         jobs / f"part-{k}.parquet", jobs / f"q-{k}.parquet", jobs / f"m-{k}.json")
    manifest = common.merge_manifests([jobs / f"m-{k}.json" for k in range(SHARDS)],
                                      [jobs / f"q-{k}.parquet" for k in range(SHARDS)],
                                      tmp_path / "manifest.json", tmp_path / "quarantine.parquet")
    assert manifest["records_in"] == manifest["records_out"] + manifest["records_quarantined"]
    events = read_tables([jobs / f"part-{k}.parquet" for k in range(SHARDS)]).to_pandas()
    # sources are named by keyed hashes under results/ (privacy); map them back to file names to compare
    names = {common.SourceNames(key).name(t["path"]): Path(t["path"]).name for t in tables}
    quarantine = sorted((names.get(r["source"], r["source"]), r["locator"], r["reason"])
                        for r in pq.read_table(tmp_path / "quarantine.parquet").to_pylist())
    whole = ingest_ehr(tables, key, tmp_path / "whole", SHARDS)
    assert {k: whole[k] for k in ("records_in", "records_out", "records_quarantined", "rows_written")} == {
        k: manifest[k] for k in ("records_in", "records_out", "records_quarantined", "rows_written")}
    whole_events = read_tables([tmp_path / "whole" / f"part-{k}.parquet" for k in range(SHARDS)]).to_pandas()
    columns = ["subject_id", "time", "code", "numeric_value", "text_value"]
    assert (whole_events.sort_values(columns).reset_index(drop=True)[columns].astype(str)
            .equals(events.sort_values(columns).reset_index(drop=True)[columns].astype(str)))
    whole_quarantine = sorted((names.get(r["source"], r["source"]), r["locator"], r["reason"])
                              for r in pq.read_table(tmp_path / "whole" / "quarantine.parquet").to_pylist())
    assert whole_quarantine == quarantine
    return manifest, events, quarantine


def sexes(events: pd.DataFrame) -> dict[int, str]:
    return dict(zip(events.subject_id, events.code, strict=True))


def patients_csv(n: int = 9) -> str:
    return "patient_id,sex\n" + "".join(f"P{i},{'FM'[i % 2]}\n" for i in range(n))


def test_bom_patients_table_reaches_every_shard_like_without_bom(tmp_path):
    """The reported crash: "CSV UTF-8" (byte-order mark) sent every row to shard 0 and its job refused them
    (`RuntimeError: ehr: 6 rows of other shards in the output of shard 0`)."""
    plain = tmp_path / "plain"
    plain.mkdir()
    _, expected, _ = index_and_ingest(plain, [table(plain, PATIENTS, patients_csv().encode())], tmp_path / "salt")
    bom = tmp_path / "bom"
    bom.mkdir()
    data = b"\xef\xbb\xbf" + patients_csv().replace("\n", "\r\n").encode()  # as Excel writes it
    manifest, events, quarantine = index_and_ingest(bom, [table(bom, PATIENTS, data)], tmp_path / "salt")
    assert (manifest["records_in"], manifest["records_out"], quarantine) == (9, 9, [])
    assert sexes(events) == sexes(expected)
    key = load_or_create_salt(tmp_path / "salt")
    assert len({shard_of(subject_pseudonym(f"P{i}", key), SHARDS) for i in range(9)}) > 1  # several shards used
    staged = [bom / "staging" / "ehr" / "table-0" / f"shard-{k}.csv" for k in range(SHARDS)]
    assert all(p.read_text().startswith("__line__,patient_id,sex\n") for p in staged)


def test_quoted_multiline_fields_keep_their_text_and_the_lines_after_them(tmp_path):
    data = (b'patient_id,charttime,text\r\n'
            b'P1,2020-01-01,"first line, with a comma\r\nsecond ""quoted"" line"\r\n'
            b'\r\n'  # a blank line is not a row
            b'P2,2020-01-02,plain\r\n'
            b',2020-01-03,no subject\r\n')  # line 6
    manifest, events, quarantine = index_and_ingest(tmp_path, [table(tmp_path, NOTES, data)])
    assert (manifest["records_in"], manifest["records_out"]) == (3, 2)
    assert quarantine == [("notes.csv", "line 6", "missing subject id in column 'patient_id'")]
    assert sorted(events.text_value) == ['first line, with a comma\r\nsecond "quoted" line', "plain"]


def test_bytes_not_valid_in_the_encoding_quarantine_their_row_and_an_encoding_reads_them(tmp_path):
    data = (b"patient_id,charttime,test,value\n"
            b"P1,2020-01-01,HB,12\n") + b"P2,2020-01-01,GLUC\xd6SE,5\n" + b"P\xc43,2020-01-01,HB,11\n"
    _, events, quarantine = index_and_ingest(tmp_path, [table(tmp_path, LABS, data)])
    hint = "; if the whole file is in another encoding, set the table's encoding"
    assert quarantine == [("labs.csv", "line 3", f"not valid UTF-8 in column 'test' (byte 0xD6){hint}"),
                          ("labs.csv", "line 4", f"not valid UTF-8 in column 'patient_id' (byte 0xC4){hint}")]
    assert events.code.tolist() == ["LAB//HB"]
    latin = tmp_path / "latin"
    latin.mkdir()
    manifest, events, quarantine = index_and_ingest(latin, [table(latin, LABS, data, encoding="latin-1")])
    assert (manifest["records_out"], quarantine) == (3, [])
    assert sorted(events.code) == ["LAB//GLUCÖSE", "LAB//HB", "LAB//HB"]
    key = load_or_create_salt(latin / "salt")
    assert subject_pseudonym("PÄ3", key) in set(events.subject_id)


def test_ragged_rows_are_quarantined_and_a_trailing_comma_is_not(tmp_path):
    data = (b"patient_id,charttime,test,value\n"
            b"P1,2020-01-01,HB,12,\n"          # trailing comma: nothing lost
            b"P2,2020-01-01,HB\n"              # line 3: a cell missing
            b"P3,2020-01-01,HB,12,mmol/l\n"    # line 4: one cell too many
            b"P4,2020-01-01,HB,13\n")
    manifest, events, quarantine = index_and_ingest(tmp_path, [table(tmp_path, LABS, data)])
    assert (manifest["records_in"], manifest["records_out"]) == (4, 2)
    assert quarantine == [("labs.csv", "line 3", "ragged row: 3 fields where the header has 4"),
                          ("labs.csv", "line 4", "ragged row: 5 fields where the header has 4")]
    assert sorted(events.numeric_value.tolist()) == [12.0, 13.0]


@pytest.mark.parametrize(("data", "encoding", "message"), [
    (b'patient_id,sex\nP1,"F\nP2,M\nP3,F\n', "utf-8", r"line 2: a quoted field opened on this row is never closed"),
    ("patient_id,sex\nP1,F\n".encode("utf-16"), "utf-8", r"the file is UTF-16 \(byte-order mark FF FE\)"),
    (b"patient_id,sex\nP1,F\n", "klingon", r"unknown encoding 'klingon'"),
    (b"patient_\xefd,sex\nP1,F\n", "utf-8", r"header column 1 is not valid UTF-8 \(byte 0xEF\)"),
], ids=["unclosed_quote", "utf16", "unknown_encoding", "undecodable_header"])
def test_unreadable_tables_fail_every_shard_job_naming_the_file_and_never_the_index(tmp_path, data, encoding,
                                                                                     message):
    spec = table(tmp_path, PATIENTS, data, encoding=encoding)
    index = raw_index.build_index({"ehr": [spec]}, str(tmp_path / "salt"), SHARDS, str(tmp_path / "staging"))
    key = load_or_create_salt(tmp_path / "salt")
    for k in range(SHARDS):
        with pytest.raises(EhrInputError, match=rf"^{spec['path']}: {message}"):
            ingest_ehr_shard(raw_index.staged_tables([spec], index.ehr[k]), key, common.ShardJob(k, SHARDS),
                             tmp_path / "p.parquet", tmp_path / "q.parquet", tmp_path / "m.json")
    with pytest.raises(EhrInputError, match=message):
        ingest_ehr([spec], key, tmp_path / "whole", SHARDS)


def test_reader_gives_each_row_its_starting_line_and_one_cell_per_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'\xef\xbb\xbfa,b\r\n1,"x\ry"\r\n\r\n2,z\r3,w\n')  # CR alone ends a line too
    header, rows = ehr_csv.read_csv(path, "utf-8")
    assert header == ["a", "b"]
    assert [(r.line, r.cells, r.problems) for r in rows] == [(2, ["1", "x\ry"], []), (5, ["2", "z"], []),
                                                            (6, ["3", "w"], [])]


def test_a_table_edit_reruns_only_the_shards_whose_slice_changed_and_still_merges(tmp_path):
    """Rows added for one subject rewrite one staged slice; the other shards keep their outputs and their
    manifests' older checksum of the table, and the merge takes the newest one instead of failing."""
    spec = table(tmp_path, PATIENTS, patients_csv().encode())
    salt, staging, jobs = str(tmp_path / "salt"), str(tmp_path / "staging"), tmp_path / "jobs"
    index = raw_index.build_index({"ehr": [spec]}, salt, SHARDS, staging)
    key = load_or_create_salt(salt)

    def run_shard(k: int) -> None:
        ingest_ehr_shard(raw_index.staged_tables([spec], index.ehr[k]), key, common.ShardJob(k, SHARDS),
                         jobs / f"part-{k}.parquet", jobs / f"q-{k}.parquet", jobs / f"m-{k}.json")

    for k in range(SHARDS):
        run_shard(k)
    before = {k: Path(index.ehr[k][0]).read_bytes() for k in range(SHARDS)}
    (tmp_path / "patients.csv").write_text(patients_csv() + "P0,F\n")  # a second row of P0
    index = raw_index.build_index({"ehr": [spec]}, salt, SHARDS, staging)
    changed = [k for k in range(SHARDS) if Path(index.ehr[k][0]).read_bytes() != before[k]]
    assert changed == [shard_of(subject_pseudonym("P0", key), SHARDS)]
    run_shard(changed[0])  # what Snakemake re-runs
    manifest = common.merge_manifests([jobs / f"m-{k}.json" for k in range(SHARDS)],
                                      [jobs / f"q-{k}.parquet" for k in range(SHARDS)],
                                      tmp_path / "manifest.json", tmp_path / "quarantine.parquet")
    assert (manifest["records_in"], manifest["records_out"]) == (10, 10)
    name = common.SourceNames(key).name(spec["path"])
    assert manifest["inputs"] == {name: common.sha256_file(spec["path"])}


def test_a_ragged_row_is_refused_for_being_ragged_only(tmp_path):
    data = b"patient_id,charttime,test,value\nP1,2020-01-01\n"  # its test and time checks would be noise
    _, _, quarantine = index_and_ingest(tmp_path, [table(tmp_path, LABS, data)])
    assert quarantine == [("labs.csv", "line 2", "ragged row: 2 fields where the header has 4")]
