"""The one CSV reader of EHR tables, shared by the raw-file index (which cuts a table into per-shard staged
CSVs while Snakemake parses) and the EHR ingest (which reads those, or the whole table), so both see the
same header, the same rows and the same cells.

What it promises, for any bytes:
- A UTF-8 byte-order mark (spreadsheets' "CSV UTF-8") is dropped; a UTF-16 one stops with a clear error
  unless the table's `encoding` is a UTF-16 one.
- CRLF, LF and CR line ends; quoted fields holding commas, quotes ("") and line breaks. Each row keeps the
  1-based line of the original file where it starts (header = line 1); blank lines are not rows.
- The file is decoded with the table's `encoding` (default utf-8, see the config schema). A byte that is
  not valid there never crashes and is never dropped: the row gets a problem naming the column and the
  byte (the cell's text is never quoted: it may be a name), so the ingest quarantines it; its cell reads
  U+FFFD. The raw-file index keeps such bytes as they are in the staged CSV, so the shard job finds them.
- A row with fewer cells than the header, or more non-empty ones, gets a problem naming both counts (and
  is padded or cut to the header). Empty cells beyond the header (a trailing comma) carry nothing and are
  ignored.
- A quoted field never closed (it would swallow the rest of the file) stops with `CsvFileError` naming the
  line where it opened, as does an unknown encoding or an unreadable file.

A staged CSV (written by the raw-file index) is UTF-8 and has a column `__line__`: the row's line in the
original file, used as the row's line; its problems name the table's encoding, as the original's would.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mmhealth.core.config import section_schema

LINE_COLUMN = "__line__"  # original 1-based file line of a staged row
UTF8_BOM = codecs.BOM_UTF8
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
NOT_DECODED = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of bytes the encoding rejects
STAGED_ENCODING = "utf-8"
RAGGED = "ragged row"  # how a ragged row's problem starts
csv.field_size_limit(1 << 30)  # a long clinical note is one cell; the default 128 KiB would stop the read


class CsvFileError(Exception):
    """A file that cannot be read as a CSV at all; the message names the file and, where known, the line."""


@dataclass(slots=True)
class CsvRow:
    """One data row: where it starts in the original file, exactly one cell per header column, problems."""

    line: int
    cells: list[str]
    problems: list[str] = field(default_factory=list)


def table_default(key: str) -> object:
    """The config schema's default of an `inputs.ehr` table key (`encoding`, `censored`): the one place
    defaults live, for callers handed a table without it (tests, a user running a script by hand)."""
    return section_schema("inputs")["properties"]["ehr"]["items"]["properties"][key]["default"]


def _codec(encoding: str) -> codecs.CodecInfo:
    try:
        return codecs.lookup(encoding)
    except LookupError:
        raise CsvFileError(f"unknown encoding {encoding!r} (use a Python codec name such as utf-8, latin-1, "
                           "cp1252)") from None


def encoding_name(encoding: str) -> str:
    """The codec's canonical name for messages: UTF-8, UTF-16, latin-1, cp1252."""
    name = _codec(encoding).name
    return {"iso8859-1": "latin-1"}.get(name, name.upper() if name.startswith("utf") else name)


def _text(path: str | Path, encoding: str) -> io.TextIOWrapper:
    """The file as text: byte-order mark dropped, undecodable bytes kept as surrogates (never an error)."""
    codec = _codec(encoding)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - handed to the wrapper, which closes it
    except OSError as exc:
        raise CsvFileError(f"{path}: cannot read CSV: {type(exc).__name__}: {exc.strerror}") from None
    start = handle.read(4)
    if start.startswith(UTF16_BOMS) and not codec.name.startswith("utf-16"):
        handle.close()
        raise CsvFileError(f"{path}: the file is UTF-16 (byte-order mark {start[:2].hex(' ').upper()}); save it "
                           "as 'CSV UTF-8' or set the table's encoding: utf-16")
    skip = len(UTF8_BOM) if start.startswith(UTF8_BOM) and not codec.name.startswith("utf-16") else 0
    handle.seek(skip)
    return io.TextIOWrapper(handle, encoding=encoding, errors="surrogateescape", newline="")


def undecodable_problems(cells: list[str], header: list[str], encoding: str) -> list[str]:
    """A problem per cell holding bytes the encoding rejects: the column and the first such byte."""
    problems, name = [], encoding_name(encoding)
    for column, cell in zip(header, cells, strict=False):
        bad = NOT_DECODED.search(cell)
        if bad:
            problems.append(f"not valid {name} in column '{column}' (byte 0x{ord(bad.group()) - 0xDC00:02X}); "
                            "if the whole file is in another encoding, set the table's encoding")
    return problems


def _shaped(cells: list[str], width: int) -> tuple[list[str], str | None]:
    """Cells padded or cut to `width`, and the problem when that lost or invented something."""
    if len(cells) == width:
        return cells, None
    if len(cells) > width and not any(c.strip() for c in cells[width:]):
        return cells[:width], None  # a trailing comma: nothing is lost
    problem = f"{RAGGED}: {len(cells)} fields where the header has {width}"
    return (cells + [""] * (width - len(cells)))[:width], problem


def _quote_never_closed(path: str | Path, encoding: str, start: int) -> bool:
    """Whether the record starting at line `start` (the last, spanning several lines up to the end of the
    file) has an odd number of quotes: a quote opened and never closed, which swallowed the rest."""
    with _text(path, encoding) as text:
        # newline="": lines end at LF, CRLF or CR alone, as the csv module counts them
        quotes = sum(line.count('"') for number, line in enumerate(text, start=1) if number >= start)
    return quotes % 2 == 1


def read_csv(path: str | Path, encoding: str, staged: bool = False,
             as_read: bool = False) -> tuple[list[str], Iterator[CsvRow]]:
    """The header (without `__line__`) and an iterator of its rows, read as the module docstring says.

    `staged`: a staged CSV (UTF-8, lines from its `__line__` column); `encoding` then only names the
    original's encoding in problems. `as_read`: cells as parsed, neither padded nor cut, undecodable bytes kept
    as surrogates, so that writing them back (UTF-8, surrogateescape) gives a staged row that reads again
    with the same cells and problems. CsvFileError as the module docstring says.
    """
    try:
        _codec(encoding)
    except CsvFileError as exc:
        raise CsvFileError(f"{path}: {exc}") from None
    text = _text(path, STAGED_ENCODING if staged else encoding)
    reader = csv.reader(text)
    try:
        header = next(reader, [])
    except (csv.Error, OSError) as exc:
        text.close()
        raise CsvFileError(f"{path}: cannot read the CSV header: {exc}") from None
    line_at = header.index(LINE_COLUMN) if staged and LINE_COLUMN in header else None
    columns = [c for i, c in enumerate(header) if i != line_at]
    bad = [i for i, name in enumerate(columns) if NOT_DECODED.search(name)]
    if bad:
        text.close()
        byte = ord(NOT_DECODED.search(columns[bad[0]]).group()) - 0xDC00
        raise CsvFileError(f"{path}: header column {bad[0] + 1} is not valid {encoding_name(encoding)} (byte "
                           f"0x{byte:02X}); if the file is in another encoding, set the table's encoding (e.g. "
                           "latin-1, cp1252)")
    width = len(columns)

    def rows() -> Iterator[CsvRow]:
        previous_end, last_start = reader.line_num, None
        with text:
            while True:
                try:
                    cells = next(reader, None)
                except csv.Error as exc:
                    raise CsvFileError(f"{path}: line {previous_end + 1}: {exc}") from None
                if cells is None:
                    break
                start, previous_end = previous_end + 1, reader.line_num
                last_start = start if previous_end > start else None  # a record over several lines
                if not cells:  # a blank line
                    continue
                line = int(cells.pop(line_at)) if line_at is not None and line_at < len(cells) else start
                problems = []
                shaped = cells
                if len(cells) != width:
                    shaped, ragged = _shaped(cells, width)
                    if ragged:
                        problems.append(ragged)
                joined = "".join(shaped)
                if not joined.isascii() and NOT_DECODED.search(joined):  # surrogates are never ASCII
                    problems += undecodable_problems(shaped, columns, encoding)
                    shaped = [NOT_DECODED.sub("\ufffd", c) for c in shaped]
                yield CsvRow(line, cells if as_read else shaped, problems)
        if last_start is not None and _quote_never_closed(path, STAGED_ENCODING if staged else encoding,
                                                          last_start):
            raise CsvFileError(f"{path}: line {last_start}: a quoted field opened on this row is never closed "
                               "(it would swallow the rest of the file)")

    return columns, rows()
