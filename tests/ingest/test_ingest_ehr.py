"""ingest_ehr: MEDS events, row quarantine with file lines, mapping errors, note scrubbing, privacy,
and one subject id per raw id across DICOM, FASTA and EHR."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ingest_ehr import main
from mmhealth.core.parquet_io import read_metadata, read_tables
from mmhealth.core.pseudonym import date_shift_days, subject_pseudonym
from mmhealth.ingest import common
from mmhealth.ingest.dicom import ingest_dicom
from mmhealth.ingest.ehr import MEDS_SCHEMA, EhrInputError, ingest_ehr
from mmhealth.ingest.ehr_scrub import date_variants
from mmhealth.ingest.fasta import ingest_fasta

KEY = b"e" * 64
MIN_SHIFT = common.privacy_params().min_date_shift_days  # the schema's default
PATIENTS = ("patient_id,name,sex,birth_date,address\n"
            "00042,Janet Doe,F,1956-03-14,7 Elm Road\n"
            "042,John Smith,M,1970-01-02,\n")
PATIENTS_TABLE = {"path": "patients.csv", "subject_id": "patient_id",
                  "identifiers": ["name", "birth_date", "address"],
                  "events": [{"code": "SEX//{sex}"}, {"code": "MEDS_BIRTH", "time": "birth_date"}]}
LABS_TABLE = {"path": "labs.csv", "subject_id": "patient_id", "time": "charttime",
              "events": [{"code": "LAB//{test}", "numeric_value": "value"}]}
NOTES_TABLE = {"path": "notes.csv", "subject_id": "patient_id", "time": "charttime",
               "events": [{"code": "NOTE", "text_value": "text"}]}


def write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


def tables(tmp_path: Path, *specs: dict) -> list[dict]:
    return [{**spec, "path": str(tmp_path / spec["path"])} for spec in specs]


def run(tmp_path: Path, table_specs: list[dict], shards: int = 2,
        privacy: common.PrivacyParams | None = None) -> tuple[dict, pd.DataFrame, list[dict]]:
    """Ingest; check the output contract; return manifest, events (pandas) and quarantine rows."""
    out = tmp_path / "out"
    manifest = ingest_ehr(table_specs, KEY, out, shards, privacy)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["records_in"] == manifest["records_out"] + manifest["records_quarantined"]
    parts = [out / f"part-{k}.parquet" for k in range(shards)]
    for k, part in enumerate(parts):
        assert pq.read_schema(part).remove_metadata() == MEDS_SCHEMA
        assert all(s % shards == k for s in pq.read_table(part).column("subject_id").to_pylist())
    assert read_metadata(parts[0])["params"]["tables"][0]["subject_id"] == table_specs[0]["subject_id"]
    events = read_tables(parts).to_pandas()
    assert manifest["rows_written"] == len(events)
    return manifest, events, pq.read_table(out / "quarantine.parquet").to_pylist()


def test_tables_become_sorted_shifted_meds_events(tmp_path):
    write(tmp_path, "patients.csv", PATIENTS)
    write(tmp_path, "labs.csv", "patient_id,charttime,test,value\n"
                                "00042,2020-01-02 08:30,GLUCOSE,5.4\n"
                                "00042,2020-01-01T07:00:00,HB,\n"
                                "042,2021-06-01,GLUCOSE,6\n")
    manifest, events, quarantine = run(tmp_path, tables(tmp_path, PATIENTS_TABLE, LABS_TABLE), shards=1)
    assert (manifest["records_in"], manifest["records_out"], quarantine) == (5, 5, [])
    janet, john = subject_pseudonym("00042", KEY), subject_pseudonym("042", KEY)  # leading zeros kept
    assert janet != john
    shift = pd.Timedelta(days=date_shift_days(janet, KEY, MIN_SHIFT))
    mine = events[events.subject_id == janet].reset_index(drop=True)
    assert mine.code.tolist() == ["SEX//F", "MEDS_BIRTH", "LAB//HB", "LAB//GLUCOSE"]
    assert pd.isna(mine.time[0])  # static events first
    raw_times = ["1956-03-14", "2020-01-01 07:00", "2020-01-02 08:30"]
    assert mine.time[1:].tolist() == [pd.Timestamp(t) + shift for t in raw_times]
    assert pd.isna(mine.numeric_value[2]) and mine.numeric_value[3] == pytest.approx(5.4)
    assert events.subject_id.is_monotonic_increasing and events.text_value.isna().all()


def test_bad_rows_are_quarantined_with_their_file_line(tmp_path):
    write(tmp_path, "labs.csv",
          'patient_id,charttime,test,value,comment\n'
          '1,2020-01-01 10:00,GLUCOSE,5,"two\nline comment"\n'   # lines 2-3: a row may span lines
          ',2020-01-01 10:00,GLUCOSE,5,\n'                          # 4
          '1,2020-13-45 10:00,GLUCOSE,5,\n'                         # 5
          '1,,GLUCOSE,5,\n'                                         # 6
          '\n'                                                      # 7: blank, skipped
          '1,2020-01-01 10:00,GLUCOSE,high,\n'                      # 8
          '1,2020-01-01 10:00,GLUCOSE,1e60,\n'                      # 9
          '1,2020-01-01 10:00, ,5,\n'                               # 10
          '1,yesterday,,abc,\n'                                     # 11
          '1,2020-01-01 10:00,HB,,\n')                              # 12: empty number is null, not an error
    write(tmp_path, "vitals.csv", "pid,when,hr\n2,01/02/2020 10:00,60\n2,2020-02-01 10:00,61\n")
    vitals = {"path": "vitals.csv", "subject_id": "pid", "time": "when", "time_format": "%d/%m/%Y %H:%M",
              "events": [{"code": "VITAL//HR", "numeric_value": "hr"}]}
    manifest, events, quarantine = run(tmp_path, tables(tmp_path, LABS_TABLE, vitals))
    labs = common.SourceNames(KEY).name(str(tmp_path / "labs.csv"))  # keyed names, never the path
    expected = [
        (labs, "line 4", "missing subject id in column 'patient_id'"),
        (labs, "line 5", "unparseable time in column 'charttime' (expected ISO 8601)"),
        (labs, "line 6", "empty time in column 'charttime'"),
        (labs, "line 8", "unparseable numeric_value in column 'value'"),
        (labs, "line 9", "unparseable numeric_value in column 'value'"),
        (labs, "line 10", "empty value in column 'test' for code 'LAB//{test}'"),
        (labs, "line 11", "unparseable time in column 'charttime' (expected ISO 8601); "
                          "unparseable numeric_value in column 'value'; "
                          "empty value in column 'test' for code 'LAB//{test}'"),
        (common.SourceNames(KEY).name(str(tmp_path / "vitals.csv")), "line 3",
         "unparseable time in column 'when' (expected '%d/%m/%Y %H:%M')"),
    ]
    assert [(q["source"], q["locator"], q["reason"]) for q in quarantine] == expected
    assert (manifest["records_in"], manifest["records_out"], manifest["records_quarantined"]) == (11, 3, 8)
    assert sorted(events.code) == ["LAB//GLUCOSE", "LAB//HB", "VITAL//HR"]
    vital = events[events.code == "VITAL//HR"].iloc[0]
    shift = pd.Timedelta(days=date_shift_days(subject_pseudonym("2", KEY), KEY, MIN_SHIFT))
    assert vital.time == pd.Timestamp("2020-02-01 10:00") + shift  # day first, as time_format says


def test_mapping_errors_fail_the_job_naming_file_and_column(tmp_path):
    write(tmp_path, "labs.csv", "patient_id,charttime,test\n1,2020-01-01,X\n")
    missing = r"labs\.csv: column 'value' \(numeric_value of 'LAB//\{test\}'\) is missing"
    with pytest.raises(EhrInputError, match=missing):
        ingest_ehr(tables(tmp_path, LABS_TABLE), KEY, tmp_path / "out", 1)
    with pytest.raises(EhrInputError, match=r"nowhere\.csv: cannot read CSV: FileNotFoundError"):
        ingest_ehr([{**LABS_TABLE, "path": str(tmp_path / "nowhere.csv")}], KEY, tmp_path / "out", 1)
    with pytest.raises(EhrInputError, match=r"inputs\.ehr\[0\]: unknown key\(s\) \['colour'\]"):
        ingest_ehr([{**LABS_TABLE, "colour": "red"}], KEY, tmp_path / "out", 1)
    leaky = {**PATIENTS_TABLE, "events": [{"code": "NAME//{name}"}]}
    with pytest.raises(EhrInputError, match=r"identifier column\(s\) \['name'\] would be emitted"):
        ingest_ehr([leaky], KEY, tmp_path / "out", 1)
    assert not (tmp_path / "out").exists()


def test_notes_are_scrubbed_of_the_subjects_own_identifiers(tmp_path):
    write(tmp_path, "patients.csv", PATIENTS)
    write(tmp_path, "notes.csv", "patient_id,charttime,text\n"
          '00042,2020-01-01,"Janet Doe (DOB 14/03/1956; 1956-03-14; 19560314; March 14, 1956; mar 14 1956)\n'
          'MRN 00042, seen with JANET. Doesn\'t smoke. Lives at 7 elm  road. Met Dr. Smith, 042."\n'
          "042,2020-01-01,\n")
    only_own = common.privacy_params('{"scrub_notes": "identifiers"}')
    _, events, _ = run(tmp_path, tables(tmp_path, PATIENTS_TABLE, NOTES_TABLE), privacy=only_own)
    notes = events[events.code == "NOTE"].set_index("subject_id").text_value
    assert notes[subject_pseudonym("00042", KEY)] == (
        "[NAME] (DOB [DATE]; [DATE]; [DATE]; [DATE]; [DATE])\n"
        "MRN [ID], seen with [NAME]. Doesn't smoke. Lives at [ADDRESS]. Met Dr. Smith, 042.")
    assert pd.isna(notes[subject_pseudonym("042", KEY)])  # an empty note is a null text_value
    _, events, _ = run(tmp_path, tables(tmp_path, PATIENTS_TABLE, NOTES_TABLE))  # the default: patterns too
    notes = events[events.code == "NOTE"].set_index("subject_id").text_value
    assert notes[subject_pseudonym("00042", KEY)].endswith("Lives at [ADDRESS]. Met Dr. [NAME], 042.")


def test_date_variants_cover_common_spellings():
    variants = date_variants(pd.Timestamp("1956-03-04").date())
    assert {"1956-03-04", "04/03/1956", "03/04/1956", "4/3/1956", "19560304", "March 4, 1956", "4 March 1956",
            "Mar 4, 1956", "04.03.1956", "4/3/56"} <= variants


def test_cli_outputs_and_logs_hold_no_raw_identifier(tmp_path, caplog):
    from test_ingest_shards import stage_tables

    caplog.set_level(logging.INFO)
    write(tmp_path, "patients.csv", PATIENTS + "9999999,Zed Quux,X,not-a-date,\n")
    write(tmp_path, "notes.csv",
          'patient_id,charttime,text\n00042,2020-01-01,"Janet Doe, 14/03/1956, 7 Elm Road"\n')
    (tmp_path / "salt").write_text("s" * 64)
    staged = stage_tables(tables(tmp_path, PATIENTS_TABLE, NOTES_TABLE), b"s" * 64, 2, tmp_path / "staged")
    out = tmp_path / "out"
    for k in range(2):
        main(["--tables-json", json.dumps(staged[k]), "--shard", str(k), "--shards", "2", "--salt-file",
              str(tmp_path / "salt"), "--out-part", str(out / f"part-{k}.parquet"),
              "--quarantine", str(out / f"quarantine-{k}.parquet"), "--manifest", str(out / f"manifest-{k}.json"),
              "--source-map", str(tmp_path / "staging" / f"names-{k}.tsv")])
    manifests = [json.loads((out / f"manifest-{k}.json").read_text()) for k in range(2)]
    assert sum(m["records_in"] for m in manifests) == 4 and sum(m["records_quarantined"] for m in manifests) == 1
    assert {m["meds_version"] for m in manifests} == {"0.4.1"}
    raw_bytes = [path.read_bytes().decode("latin-1") for path in out.iterdir()]
    decoded = [caplog.text] + [str(pq.read_table(path).to_pylist()) + str(pq.read_schema(path).metadata)
                               for path in out.glob("*.parquet")]
    long_secrets = ["Janet", "Smith", "1956-03-14", "14/03/1956", "7 Elm", "00042", "9999999"]
    for secret in long_secrets:  # parquet footers hold column statistics in plain bytes
        assert not any(secret in text for text in raw_bytes), secret
    for secret in [*long_secrets, "Doe", "Zed", "Quux", "Elm"]:
        assert not any(secret in text for text in decoded), secret
    refused = [row for k in range(2) for row in pq.read_table(out / f"quarantine-{k}.parquet").to_pylist()]
    assert refused == [{"source": common.SourceNames(b"s" * 64).name(str(tmp_path / "patients.csv")),
                        "locator": "line 4", "reason": "unparseable time in column 'birth_date' (expected ISO 8601)"}]
    names = common.read_source_maps((tmp_path / "staging").iterdir())  # the operator's way back
    assert names[refused[0]["source"]] == str(tmp_path / "patients.csv")
    assert not any(str(tmp_path) in text for text in [*raw_bytes, *decoded])  # no input path under results


def test_same_raw_id_gives_one_subject_id_across_modalities(tmp_path):
    from test_ingest_dicom import ct_slice
    from test_ingest_fasta import write_fasta

    raw_id = "MRN0007"
    ct_slice(tmp_path / "dicom" / "IM1", series_uid="1.2.3", patient_id=raw_id)
    write_fasta(tmp_path / "fasta" / "a.fa", [(f"{raw_id}|rec1", "ACGT" * 4)])
    write(tmp_path, "patients.csv", f"patient_id,sex\n {raw_id},F\n")
    ingest_dicom(tmp_path / "dicom", KEY, tmp_path / "out" / "image", 3, 8)
    ingest_fasta(tmp_path / "fasta", KEY, tmp_path / "out" / "dna", 3, r"^(?P<subject_id>[^|]+)\|", 8, 8, 0.5)
    ingest_ehr([{"path": str(tmp_path / "patients.csv"), "subject_id": "patient_id",
                 "events": [{"code": "SEX//{sex}"}]}], KEY, tmp_path / "out" / "ehr", 3)
    expected = subject_pseudonym(raw_id, KEY)
    for modality in ("image", "dna", "ehr"):
        part = tmp_path / "out" / modality / f"part-{expected % 3}.parquet"
        assert set(pq.read_table(part).column("subject_id").to_pylist()) == {expected}, modality
