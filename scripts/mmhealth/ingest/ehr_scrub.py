"""Scrubbing clinical notes: the subject's own identifiers, then PHI patterns, into typed placeholders.

Two passes, both always measured together by benchmarks/scrub.py on a labelled synthetic note set:
1. Known identifiers: the terms come from the subject's identifier columns (memory only); dates are expanded
   into their common spellings, names and addresses into their parts, so 'Mr. Smith' and '14/03/1956' go.
2. Patterns (`ehr_phi`, config `privacy.scrub_notes: patterns`): e-mails, URLs, phone and fax numbers,
   MRN-like and other ids, street addresses, dates, ages over 89, and names found by their cues (titles,
   credentials, relations, signature and label lines), each name then removed wherever else the note
   repeats it. No library is used: the ones that install here need language models or NLTK data that
   cannot be fetched offline (see README's privacy section for the measured comparison).
Placeholders are typed (`[NAME]`, `[PHONE]`, `[DATE]`, ...) so the text stays readable to models.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, datetime

from mmhealth.ingest.ehr_phi import scrub_phi

REDACTED = "[REDACTED]"
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
IDENTIFIER_DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y%m%d",
                           "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%Y/%m/%d", "%B %d, %Y", "%d %B %Y")


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


DATE_TERM = re.compile(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{2,4}|\d{8}|[^\W\d_]{3,}\.? \d{1,2},? \d{4}"
                       r"|\d{1,2} [^\W\d_]{3,}\.?,? \d{4}")


def _placeholder(match: re.Match[str]) -> str:
    """Typed placeholder of a known identifier as matched: a date spelling, an address, a number, a name."""
    term = " ".join(match.group().split())
    if DATE_TERM.fullmatch(term):
        return "[DATE]"
    if any(c.isdigit() for c in term):
        return "[ADDRESS]" if " " in term and any(c.isalpha() for c in term) else "[ID]"
    return "[NAME]"


def scrubbed(text: str, subject: str, redact: dict[str, set[str]],
             patterns: dict[str, re.Pattern[str] | None], use_patterns: bool = True) -> str | None:
    """A note without the subject's known identifiers and (`use_patterns`) without PHI patterns; None if
    empty. `patterns` caches each subject's compiled identifier pattern between calls."""
    if text == "":
        return None
    if subject not in patterns:
        patterns[subject] = scrub_pattern(redact.get(subject, set()) | raw_id_terms(subject))
    pattern = patterns[subject]
    if use_patterns:  # first: an e-mail or a cue ('daughter Anna') must be seen before a name part goes
        text = scrub_phi(text)
    return pattern.sub(_placeholder, text) if pattern else text
