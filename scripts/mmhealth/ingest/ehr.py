"""Ingest EHR CSV tables -> MEDS events (subject_id, time, code, numeric_value, text_value).

Each configured table maps its rows to one or more events: `code` is a template over the row's columns
(`LAB//{test}`), times are shifted by the subject's keyed date shift, and note text is scrubbed of the
subject's known identifiers (columns listed under `identifiers`, its raw id, its birth date in common
formats, see `ehr_scrub`).
Tables are read by `ehr_csv`, the reader the raw-file index uses too. A bad row (bytes not valid in the
table's encoding, ragged, unparseable value or time) is quarantined with its file line; a bad mapping
(missing column, unreadable file) fails the job. A shard job reads each table's `staged` CSV (this shard's
rows with their original line numbers in a column `__line__`) and reports sources and lines of the original.
A censored numeric value (`<5`) follows the table's `censored` policy: a bound flagged in the extension column
`numeric_value_censored` (`<`/`>`), a quarantined row, or text_value.
Every written part is validated against the MEDS 0.4 data schema of the `meds` package.
"""

from __future__ import annotations

import json
import logging
import operator
import re
import string
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mmhealth.core.meds import MEDS_VERSION, validate_meds_events
from mmhealth.core.pseudonym import date_shift_days, normalise_raw_id, subject_pseudonym
from mmhealth.ingest import common, ehr_csv
from mmhealth.ingest.ehr_scrub import identifier_terms, scrubbed

SAFE_HARBOR_AGE = 90  # HIPAA Safe Harbor: ages over 89 are reported as one category, 90

log = logging.getLogger("ingest_ehr")

MEDS_SCHEMA = pa.schema([
    ("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
    ("numeric_value", pa.float32()), ("text_value", pa.string()),
    # a MEDS extension column: '<' (the true value is at most numeric_value) or '>' (at least); null: exact
    ("numeric_value_censored", pa.string()),
])
BIRTH_CODE = "MEDS_BIRTH"
CENSORED_POLICIES = ("bound", "quarantine", "text")
# a numeric cell that only bounds the value: an operator, then a plain number (the whole cell)
CENSORED_VALUE = r"^(?P<op><=|>=|<|>|≤|≥)\s*(?P<number>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)$"
CENSORED_SIDE = {"<": "<", "<=": "<", "≤": "<", ">": ">", ">=": ">", "≥": ">"}
LINE_COLUMN = ehr_csv.LINE_COLUMN  # original 1-based file line of a staged row


class EhrInputError(Exception):
    """A table that cannot be ingested at all (unreadable file, missing or misused column): the job fails."""


@dataclass(frozen=True)
class EventSpec:
    """One event a row emits: code template, and the columns of its time, number and text."""

    code: str
    time: str | None = None
    numeric_value: str | None = None
    text_value: str | None = None


@dataclass(frozen=True)
class TableSpec:
    """One CSV table of the config's `inputs.ehr` list."""

    path: str
    subject_id: str
    events: tuple[EventSpec, ...]
    time: str | None = None
    time_format: str | None = None
    identifiers: tuple[str, ...] = ()
    encoding: str | None = None  # filled from the config schema's default by parse_table_specs
    censored: str | None = None  # bound | quarantine | text; filled like encoding
    staged: str | None = None  # this shard's rows of `path`, with LINE_COLUMN


def _checked_keys(raw: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise EhrInputError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return raw


def template_columns(code: str) -> list[str]:
    """Columns named by `{column}` placeholders of a code template (no format specs, no positional fields)."""
    columns = []
    for _, name, spec, conversion in string.Formatter().parse(code):
        if name is None:
            continue
        if not name or spec or conversion:
            raise EhrInputError(f"code template {code!r}: placeholders must be plain column names "
                                "like {test}")
        columns.append(name)
    return columns


def parse_table_specs(raw_tables: list[dict[str, Any]]) -> list[TableSpec]:
    """Typed table specs from the config list; EhrInputError names the table and the bad key."""
    specs = []
    for number, raw in enumerate(raw_tables):
        where = f"inputs.ehr[{number}]"
        raw = _checked_keys(dict(raw), TableSpec, where)
        if not raw.get("path") or not raw.get("subject_id") or not raw.get("events"):
            raise EhrInputError(f"{where}: 'path', 'subject_id' and a non-empty 'events' list are required")
        events = tuple(EventSpec(**_checked_keys(dict(event), EventSpec, f"{where}.events"))
                       for event in raw["events"])
        for key in ("encoding", "censored"):
            raw[key] = raw.get(key) or ehr_csv.table_default(key)
        if raw["censored"] not in CENSORED_POLICIES:
            raise EhrInputError(f"{where}.censored: {raw['censored']!r} is not one of {list(CENSORED_POLICIES)}")
        spec = TableSpec(**{**raw, "events": events, "identifiers": tuple(raw.get("identifiers") or ())})
        for event in events:
            emitted = {*template_columns(event.code), event.numeric_value, event.text_value} - {None}
            leaked = sorted(emitted & set(spec.identifiers))
            if leaked:
                raise EhrInputError(f"{spec.path}: identifier column(s) {leaked} would be emitted by event "
                                    f"{event.code!r}; identifiers may only be used as times or for scrubbing")
        specs.append(spec)
    return specs


def required_columns(spec: TableSpec) -> dict[str, str]:
    """Every column the table's mapping reads -> its role, for the missing-column error."""
    roles = {spec.subject_id: "subject_id"}
    if spec.time:
        roles.setdefault(spec.time, "time")
    for column in spec.identifiers:
        roles.setdefault(column, "identifiers")
    for event in spec.events:
        for column in template_columns(event.code):
            roles.setdefault(column, f"code {event.code!r}")
        for role in ("time", "numeric_value", "text_value"):
            if getattr(event, role):
                roles.setdefault(getattr(event, role), f"{role} of {event.code!r}")
    return roles


def read_table(spec: TableSpec, columns: Iterable[str] | None = None) -> tuple[pd.DataFrame,
                                                                              dict[int, list[str]]]:
    """The mapped columns (or `columns`) of the CSV or its staged rows as strings (leading zeros kept, empty
    cells ''), each row's original file line in LINE_COLUMN, and the problems `ehr_csv` found per row
    (ragged, bytes not valid in the table's encoding); EhrInputError names the file and the column."""
    path = spec.staged or spec.path
    needed = required_columns(spec)
    wanted = list(dict.fromkeys(needed if columns is None else columns))
    problems: dict[int, list[str]] = defaultdict(list)
    try:
        header, rows = ehr_csv.read_csv(path, spec.encoding or str(ehr_csv.table_default("encoding")),
                                        staged=bool(spec.staged))
        for column, role in needed.items():
            if column not in header:
                raise EhrInputError(f"{path}: column '{column}' ({role}) is missing; "
                                    f"the file has columns {header}")
            if header.count(column) > 1:
                raise EhrInputError(f"{path}: column '{column}' ({role}) appears {header.count(column)} times "
                                    "in the header")
        pick = operator.itemgetter(*[header.index(column) for column in wanted], 0)  # always a tuple
        lines, cells = [], []
        for number, row in enumerate(rows):
            lines.append(row.line)
            cells.append(pick(row.cells))
            if row.problems:
                problems[number] = row.problems
    except ehr_csv.CsvFileError as exc:  # the reader names the staged copy; the user knows the original
        raise EhrInputError(str(exc).replace(str(path), spec.path, 1)) from None
    except OSError as exc:
        raise EhrInputError(f"{path}: cannot read CSV: {type(exc).__name__}: {exc}") from None
    by_column = list(zip(*cells, strict=True)) or [()] * (len(wanted) + 1)
    text = pd.StringDtype("pyarrow", na_value=np.nan)  # what astype(str) gives; from Arrow 3x faster
    frame = pd.DataFrame({column: pd.Series(pa.array(values, pa.string()), dtype=text)
                          for column, values in zip(wanted, by_column[:len(wanted)], strict=True)})
    frame[LINE_COLUMN] = pd.Series(pa.array(lines, pa.int64()).cast(pa.string()), dtype=text)
    return frame, problems


def row_lines(frame: pd.DataFrame) -> list[str]:
    """Locator of every row: `line N` of the original file."""
    return [f"line {n}" for n in frame[LINE_COLUMN]]


@dataclass
class NumericCells:
    """One numeric_value column read: numbers (NaN where empty or refused), the `<`/`>` side of censored
    cells kept as bounds (None elsewhere), and censored cells as written for the `text` policy (None
    elsewhere)."""

    values: pd.Series
    side: pd.Series
    text: pd.Series


def numeric_cells(cells: pd.Series, policy: str, flag: Any, column: str) -> NumericCells:
    """Parse a numeric_value column under the table's `censored` policy, flagging the rows it refuses:
    a censored cell (`<5`, `> 14.0`, `<= 0.1`, `≥2`) is a bound (`bound`), a refused row (`quarantine`) or
    text (`text`); anything else that is neither empty nor a finite float32 is unparseable."""
    raw = cells.str.strip()
    found = raw.str.extract(CENSORED_VALUE)
    censored = found["op"].notna()
    number = raw.where(~censored, found["number"])
    values = pd.to_numeric(number.where(number != ""), errors="coerce").astype("float64")
    with np.errstate(over="ignore"):  # beyond float32 range is refused below, not warned about
        finite = np.isfinite(values.to_numpy().astype(np.float32))
    none = pd.Series(None, index=cells.index, dtype=object)
    side, text = none, none
    if policy == "bound":
        side = found["op"].map(CENSORED_SIDE).astype(object).where(censored, None)
    elif policy == "quarantine":
        flag(censored, f"censored numeric_value in column '{column}' (the table's censored policy is quarantine)")
    else:  # text: the cell as written, no number
        text = raw.where(censored, None)
    if policy != "bound":
        values = values.where(~censored)
        finite = finite | censored.to_numpy()
    flag((raw != "") & ~finite, f"unparseable numeric_value in column '{column}'")
    return NumericCells(values, side, text)


def parse_times(raw: pd.Series, time_format: str | None) -> pd.Series:
    """Naive UTC datetimes (offsets converted), NaT where empty or unparseable."""
    if time_format:
        parsed = pd.to_datetime(raw, format=time_format, errors="coerce", utc=True)
    else:
        parsed = pd.to_datetime(raw, format="ISO8601", errors="coerce", utc=True)
    return parsed.dt.tz_localize(None).dt.as_unit("us")


def collect_identifiers(specs: list[TableSpec]) -> dict[str, set[str]]:
    """Raw subject id -> terms to redact from its notes, gathered from every table (memory only)."""
    terms: dict[str, set[str]] = defaultdict(set)
    for spec in specs:
        birth_columns = [e.time or spec.time for e in spec.events
                         if e.code == BIRTH_CODE and (e.time or spec.time)]
        columns = [*spec.identifiers, *birth_columns]
        formats = [spec.time_format] if spec.time_format else []
        if not columns:
            continue
        frame, _ = read_table(spec, [spec.subject_id, *columns])
        for row in frame.itertuples(index=False, name=None):
            subject = normalise_raw_id(row[0])
            if subject:
                for value in row[1:]:
                    terms[subject] |= identifier_terms(value, formats)
    return terms


@dataclass
class TableResult:
    """Events of one table, its refused rows and its row count."""

    events: pd.DataFrame
    refused: list[common.QuarantineRow]
    rows: int


def table_events(spec: TableSpec, key: bytes, redact: dict[str, set[str]],
                 privacy: common.PrivacyParams | None = None) -> TableResult:
    """Map one table's rows to events; rows with any problem are refused with their file line."""
    privacy = privacy or common.privacy_params()
    frame, problems = read_table(spec)
    # a ragged row's cells are misaligned: its other "problems" would only be noise after the real one
    ragged = {i for i, reasons in problems.items() if reasons[0].startswith(ehr_csv.RAGGED)}

    def flag(mask: pd.Series | np.ndarray, reason: str) -> None:
        for i in np.flatnonzero(np.asarray(mask)):
            if reason not in problems[i] and i not in ragged:
                problems[i].append(reason)


    subjects = frame[spec.subject_id].str.strip()
    flag(subjects == "", f"missing subject id in column '{spec.subject_id}'")
    times, numbers, codes = {}, {}, {}
    for event in spec.events:
        column = event.time or spec.time
        if column and column not in times:
            raw = frame[column].str.strip()
            times[column] = parse_times(raw, spec.time_format)
            flag(raw == "", f"empty time in column '{column}'")
            flag((raw != "") & times[column].isna(), f"unparseable time in column '{column}' "
                 f"(expected {repr(spec.time_format) if spec.time_format else 'ISO 8601'})")
        if event.numeric_value and event.numeric_value not in numbers:
            numbers[event.numeric_value] = numeric_cells(frame[event.numeric_value], spec.censored or "", flag,
                                                         event.numeric_value)
        if event.numeric_value and event.text_value and spec.censored == "text":
            flag(numbers[event.numeric_value].text.notna(), f"censored numeric_value in column "
                 f"'{event.numeric_value}' cannot become text_value: the event maps its own text_value column")
        code = pd.Series("", index=frame.index)
        for literal, column, _, _ in string.Formatter().parse(event.code):
            code = code + literal
            if column is not None:
                value = frame[column].str.strip()
                flag(value == "", f"empty value in column '{column}' for code {event.code!r}")
                code = code + value
        codes[event.code] = code
    ok = ~frame.index.isin(list(problems))
    pseudonyms = {raw: subject_pseudonym(raw, key) for raw in subjects[ok].unique()}
    shift_days = {raw: date_shift_days(pid, key, privacy.min_date_shift_days) for raw, pid in pseudonyms.items()}
    shift = pd.to_timedelta(subjects[ok].map(shift_days), unit="D").astype("timedelta64[us]")
    patterns: dict[str, re.Pattern[str] | None] = {}
    events = []
    for event in spec.events:
        column = event.time or spec.time
        static = pd.Series(pd.NaT, index=frame.index[ok], dtype="datetime64[us]")
        text: Any = None
        if event.text_value:
            text = [scrubbed(value, subject, redact, patterns, privacy.scrub_notes == "patterns")
                    for value, subject in zip(frame[event.text_value][ok], subjects[ok], strict=True)]
        number = numbers[event.numeric_value] if event.numeric_value else None
        if number is not None and spec.censored == "text" and not event.text_value:
            text = number.text[ok]
        events.append(pd.DataFrame({
            "subject_id": subjects[ok].map(pseudonyms).astype("int64"),
            "time": times[column][ok] + shift if column else static,
            "code": codes[event.code][ok],
            "numeric_value": number.values[ok] if number is not None else np.nan,
            "text_value": text,
            "numeric_value_censored": number.side[ok] if number is not None else None,
        }).astype({"numeric_value": "float32"}))
    lines = row_lines(frame) if problems else []
    refused = [common.QuarantineRow(spec.path, lines[i], "; ".join(reasons))
               for i, reasons in sorted(problems.items())]
    return TableResult(pd.concat(events, ignore_index=True), refused, len(frame))


def events_table(frames: list[pd.DataFrame]) -> pa.Table:
    """MEDS table sorted by subject_id, then time with static (null-time) events first; stable otherwise."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return MEDS_SCHEMA.empty_table()
    table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True)[MEDS_SCHEMA.names], schema=MEDS_SCHEMA,
                                 preserve_index=False)
    return table.sort_by([("subject_id", "ascending", "at_start"), ("time", "ascending", "at_start")])


def cap_ages(events: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """HIPAA Safe Harbor ages: a subject 90 or older at their last event has their birth event moved to
    exactly 90 years before it, so no age above 90 can be computed from the output; returns the events and
    the number of subjects moved. Birth and events carry the same date shift, so ages are real ages."""
    births = events[(events["code"] == BIRTH_CODE) & events["time"].notna()]
    if births.empty:
        return events, 0
    last = events[events["time"].notna()].groupby("subject_id")["time"].max()
    cap = (last - pd.DateOffset(years=SAFE_HARBOR_AGE)).astype("datetime64[us]")
    floor = births["subject_id"].map(cap)
    old = births.index[(births["time"] < floor).to_numpy()]
    events = events.copy()
    events.loc[old, "time"] = floor[old]
    return events, int(events.loc[old, "subject_id"].nunique())


def collect_events(specs: list[TableSpec], key: bytes, privacy: common.PrivacyParams | None = None) -> tuple[
        pa.Table, list[common.QuarantineRow], common.RecordCounts, dict[str, str], int]:
    """Events of every table (MEDS-validated), refused rows, counts, input checksums and the number of
    subjects whose age was capped at 90."""
    redact = collect_identifiers(specs)
    counts = common.RecordCounts()
    quarantine: list[common.QuarantineRow] = []
    frames = []
    for spec in specs:
        result = table_events(spec, key, redact, privacy)
        counts.records_in += result.rows
        counts.records_quarantined += len(result.refused)
        counts.records_out += result.rows - len(result.refused)
        quarantine.extend(result.refused)
        frames.append(result.events)
    frames = [f for f in frames if len(f)]
    capped = 0
    if frames:
        events, capped = cap_ages(pd.concat(frames, ignore_index=True))
        frames = [events]
    table = events_table(frames)
    validate_meds_events(table)
    # the original table's checksum: every shard job reports the same, so merged manifests agree
    inputs = {spec.path: common.sha256_file(spec.path if Path(spec.path).exists() or not spec.staged
                                            else spec.staged) for spec in specs}
    return table, quarantine, counts, inputs, capped


def _params(specs: list[TableSpec], names: common.SourceNames, privacy: common.PrivacyParams) -> dict[str, Any]:
    tables = [{k: names.name(v) if k == "path" else v for k, v in asdict(spec).items() if k != "staged"}
              for spec in specs]
    return {"tables": tables, "min_date_shift_days": privacy.min_date_shift_days,
            "scrub_notes": privacy.scrub_notes}


def _extra(capped: int) -> dict[str, Any]:
    return {"meds_version": MEDS_VERSION, "subjects_age_capped_at_90": capped}


def ingest_ehr(tables: list[dict[str, Any]], key: bytes, out_dir: str | Path, shards: int,
               privacy: common.PrivacyParams | None = None, source_map: str | Path | None = None) -> dict[str, Any]:
    """Ingest the configured tables; write part-<k>, quarantine and manifest; return the manifest. Tables
    are named by keyed hashes; `source_map` (staging) receives the hash -> path map."""
    specs, privacy, names = parse_table_specs(tables), privacy or common.privacy_params(), \
        common.SourceNames(key, source_map)
    table, quarantine, counts, inputs, capped = collect_events(specs, key, privacy)
    return common.write_ingest_outputs(out_dir, "ehr", table, shards, quarantine, counts, inputs,
                                       _params(specs, names, privacy), _extra(capped), names=names)


def ingest_ehr_shard(tables: list[dict[str, Any]], key: bytes, job: common.ShardJob, out_part: str | Path,
                     out_quarantine: str | Path, out_manifest: str | Path,
                     privacy: common.PrivacyParams | None = None,
                     source_map: str | Path | None = None) -> dict[str, Any]:
    """One shard job over the tables' `staged` rows: one part, its quarantine and manifest (tables named by
    keyed hashes; `source_map` in staging receives the hash -> path map)."""
    specs, privacy, names = parse_table_specs(tables), privacy or common.privacy_params(), \
        common.SourceNames(key, source_map)
    unstaged = [spec.path for spec in specs if not spec.staged]
    if unstaged:
        raise EhrInputError(f"{names.name(unstaged[0])}: a shard job needs the table's 'staged' CSV")
    table, quarantine, counts, inputs, capped = collect_events(specs, key, privacy)
    return common.write_shard_outputs(out_part, out_quarantine, out_manifest, "ehr", table, job, quarantine,
                                      counts, inputs, _params(specs, names, privacy), _extra(capped),
                                      names=names)


def load_tables_json(text_or_path: str) -> list[dict[str, Any]]:
    """The `inputs.ehr` list from JSON text or from a JSON file holding it."""
    source = text_or_path if text_or_path.lstrip().startswith("[") else Path(text_or_path).read_text()
    tables = json.loads(source)
    if not isinstance(tables, list):
        raise EhrInputError("--tables-json must be a JSON list of tables (the config's inputs.ehr)")
    return tables
