"""Ingest EHR CSV tables -> MEDS events (subject_id, time, code, numeric_value, text_value).

Each configured table maps its rows to one or more events: `code` is a template over the row's columns
(`LAB//{test}`), times are shifted by the subject's keyed date shift, and note text is scrubbed of the
subject's known identifiers (columns listed under `identifiers`, its raw id, its birth date in common
formats).
A bad row is quarantined with its file line; a bad mapping (missing column, unreadable file) fails the job.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import string
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

import ingest_common as common
from pseudonym import date_shift_days, load_or_create_salt, normalise_raw_id, subject_pseudonym

log = logging.getLogger("ingest_ehr")

MEDS_SCHEMA = pa.schema([
    ("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
    ("numeric_value", pa.float32()), ("text_value", pa.string()),
])
BIRTH_CODE = "MEDS_BIRTH"
REDACTED = "[REDACTED]"
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
IDENTIFIER_DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y%m%d",
                           "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%Y/%m/%d", "%B %d, %Y", "%d %B %Y")


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


def read_table(spec: TableSpec, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """The CSV as strings (leading zeros kept, empty cells ''); EhrInputError names the file and column."""
    try:
        frame = pd.read_csv(spec.path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except Exception as exc:
        raise EhrInputError(f"{spec.path}: cannot read CSV: {type(exc).__name__}: {exc}") from None
    for column, role in required_columns(spec).items():
        if column not in frame.columns:
            raise EhrInputError(f"{spec.path}: column '{column}' ({role}) is missing; "
                                f"the file has columns {list(frame.columns)}")
    return frame if columns is None else frame[list(dict.fromkeys(columns))]


def row_start_lines(path: str) -> list[int]:
    """1-based file line where each data row starts (header = line 1), counting quoted newlines and blanks."""
    import csv  # only needed when a row is refused

    lines, previous_end = [], 1
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for row in reader:
            start = previous_end + 1
            previous_end = reader.line_num
            if row:  # pandas skips blank lines too
                lines.append(start)
    return lines


def parse_times(raw: pd.Series, time_format: str | None) -> pd.Series:
    """Naive UTC datetimes (offsets converted), NaT where empty or unparseable."""
    if time_format:
        parsed = pd.to_datetime(raw, format=time_format, errors="coerce", utc=True)
    else:
        parsed = pd.to_datetime(raw, format="ISO8601", errors="coerce", utc=True)
    return parsed.dt.tz_localize(None).dt.as_unit("us")


def identifier_dates(value: str, extra_formats: Iterable[str] = ()) -> set[date]:
    """Dates a value can be read as (both readings of an ambiguous 03/04/1956), empty if none."""
    found = set()
    for fmt in (*extra_formats, *IDENTIFIER_DATE_FORMATS):
        try:
            found.add(datetime.strptime(value.strip(), fmt).date())
        except ValueError:
            continue
    return found


def date_variants(day: date) -> set[str]:
    """Common spellings of a date: ISO, day/month and month/day orders, compact, month names."""
    y, yy = str(day.year), f"{day.year % 100:02d}"
    variants = {f"{day.year}{day.month:02d}{day.day:02d}", f"{day.day:02d}{day.month:02d}{day.year}"}
    for d in {f"{day.day:02d}", str(day.day)}:
        for m in {f"{day.month:02d}", str(day.month)}:
            for sep in "-/.":
                variants |= {sep.join((y, m, d)), sep.join((d, m, y)), sep.join((m, d, y)),
                             sep.join((d, m, yy)), sep.join((m, d, yy))}
        for month in {MONTHS[day.month - 1], MONTHS[day.month - 1][:3], MONTHS[day.month - 1][:3] + "."}:
            variants |= {f"{month} {d}, {y}", f"{month} {d} {y}", f"{d} {month} {y}", f"{d} {month}, {y}"}
    return variants


def identifier_terms(value: str, extra_formats: Iterable[str] = ()) -> set[str]:
    """What to redact for one identifier value: itself, its date spellings, or its name/number parts."""
    value = " ".join(value.split())
    if not value:
        return set()
    terms = {value}
    days = identifier_dates(value, extra_formats)
    for day in days:
        terms |= date_variants(day)
    if not days:  # parts of names and addresses: 'Mr. Smith' must go too
        terms |= set(re.findall(r"[^\W\d_]{3,}|\d{5,}", value))
    return terms


def raw_id_terms(subject: str) -> set[str]:
    """A raw subject id and its long digit runs ('MRN 0012345' is also written '0012345')."""
    return {subject, *re.findall(r"\d{5,}", subject)}


def _bounded(term: str) -> str:
    pattern = r"\s+".join(re.escape(part) for part in term.split())
    for char, side in ((term[0], "before"), (term[-1], "after")):
        # a name must not end inside a longer word, a number inside a longer number
        guard = r"\d" if char.isdigit() else r"[^\W\d_]" if char.isalpha() else None
        if guard:
            pattern = f"(?<!{guard}){pattern}" if side == "before" else f"{pattern}(?!{guard})"
    return pattern


def scrub_pattern(terms: Iterable[str]) -> re.Pattern[str] | None:
    """One case-insensitive pattern over all terms, longest first so a full name wins over its parts."""
    ordered = sorted({t for t in terms if t}, key=lambda t: (-len(t), t))
    return re.compile("|".join(_bounded(t) for t in ordered), re.IGNORECASE) if ordered else None


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
        frame = read_table(spec, [spec.subject_id, *columns])
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


def table_events(spec: TableSpec, key: bytes, redact: dict[str, set[str]]) -> TableResult:
    """Map one table's rows to events; rows with any problem are refused with their file line."""
    frame = read_table(spec)
    problems: dict[int, list[str]] = defaultdict(list)

    def flag(mask: pd.Series | np.ndarray, reason: str) -> None:
        for i in np.flatnonzero(np.asarray(mask)):
            if reason not in problems[i]:
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
            raw = frame[event.numeric_value].str.strip()
            values = pd.to_numeric(raw.where(raw != ""), errors="coerce").astype("float64")
            numbers[event.numeric_value] = values
            with np.errstate(over="ignore"):  # beyond float32 range is refused below, not warned about
                finite = np.isfinite(values.to_numpy().astype(np.float32))
            flag((raw != "") & ~finite, f"unparseable numeric_value in column '{event.numeric_value}'")
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
    shift_days = {raw: date_shift_days(pid, key) for raw, pid in pseudonyms.items()}
    shift = pd.to_timedelta(subjects[ok].map(shift_days), unit="D").astype("timedelta64[us]")
    patterns: dict[str, re.Pattern[str] | None] = {}
    events = []
    for event in spec.events:
        column = event.time or spec.time
        static = pd.Series(pd.NaT, index=frame.index[ok], dtype="datetime64[us]")
        text: Any = None
        if event.text_value:
            text = [_scrubbed(value, subject, redact, patterns)
                    for value, subject in zip(frame[event.text_value][ok], subjects[ok], strict=True)]
        events.append(pd.DataFrame({
            "subject_id": subjects[ok].map(pseudonyms).astype("int64"),
            "time": times[column][ok] + shift if column else static,
            "code": codes[event.code][ok],
            "numeric_value": (numbers[event.numeric_value][ok] if event.numeric_value else np.nan),
            "text_value": text}).astype({"numeric_value": "float32"}))
    lines = row_start_lines(spec.path) if problems else []
    refused = [common.QuarantineRow(
        spec.path, f"line {lines[i]}" if len(lines) == len(frame) else f"row {i + 1}", "; ".join(reasons))
        for i, reasons in sorted(problems.items())]
    return TableResult(pd.concat(events, ignore_index=True), refused, len(frame))


def _scrubbed(text: str, subject: str, redact: dict[str, set[str]],
              patterns: dict[str, re.Pattern[str] | None]) -> str | None:
    if text == "":
        return None
    if subject not in patterns:
        patterns[subject] = scrub_pattern(redact.get(subject, set()) | raw_id_terms(subject))
    pattern = patterns[subject]
    return pattern.sub(REDACTED, text) if pattern else text


def events_table(frames: list[pd.DataFrame]) -> pa.Table:
    """MEDS table sorted by subject_id, then time with static (null-time) events first; stable otherwise."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return MEDS_SCHEMA.empty_table()
    table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True)[MEDS_SCHEMA.names], schema=MEDS_SCHEMA,
                                 preserve_index=False)
    return table.sort_by([("subject_id", "ascending", "at_start"), ("time", "ascending", "at_start")])


def ingest_ehr(tables: list[dict[str, Any]], key: bytes, out_dir: str | Path, shards: int) -> dict[str, Any]:
    """Ingest the configured tables; write part-<k>, quarantine and manifest; return the manifest."""
    specs = parse_table_specs(tables)
    redact = collect_identifiers(specs)
    counts = common.RecordCounts()
    quarantine: list[common.QuarantineRow] = []
    frames = []
    for spec in specs:
        result = table_events(spec, key, redact)
        counts.records_in += result.rows
        counts.records_quarantined += len(result.refused)
        counts.records_out += result.rows - len(result.refused)
        quarantine.extend(result.refused)
        frames.append(result.events)
    inputs = {spec.path: common.sha256_file(spec.path) for spec in specs}
    params = {"tables": [asdict(spec) for spec in specs]}
    return common.write_ingest_outputs(out_dir, "ehr", events_table(frames), shards, quarantine, counts,
                                       inputs, params)


def load_tables_json(text_or_path: str) -> list[dict[str, Any]]:
    """The `inputs.ehr` list from JSON text or from a JSON file holding it."""
    source = text_or_path if text_or_path.lstrip().startswith("[") else Path(text_or_path).read_text()
    tables = json.loads(source)
    if not isinstance(tables, list):
        raise EhrInputError("--tables-json must be a JSON list of tables (the config's inputs.ehr)")
    return tables


def main(argv: list[str] | None = None) -> None:
    common.configure_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables-json", required=True, help="inputs.ehr of the config: JSON text or file")
    parser.add_argument("--salt-file", required=True, help="secret pseudonym key file")
    parser.add_argument("--out-dir", required=True, help="results/ingest/ehr")
    parser.add_argument("--shards", type=int, required=True, help="number of part-<k>.parquet files")
    args = parser.parse_args(argv)
    key = load_or_create_salt(args.salt_file)
    ingest_ehr(load_tables_json(args.tables_json), key, args.out_dir, args.shards)


if __name__ == "__main__":
    main()
