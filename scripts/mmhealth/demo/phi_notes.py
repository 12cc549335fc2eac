"""Labelled synthetic clinical notes with PHI planted where real notes hold it, for measuring a scrubber.

`labelled_notes(n, seed)` returns notes as segments `(text, category)`: category None for clinical text,
else NAME, PHONE, EMAIL, ADDRESS, ID, URL, DATE or AGE. Each note belongs to a patient whose own name,
birth date, address and id are also returned (what an EHR's identifier columns would give the scrubber).
Names of patients, relatives and staff come in several forms (full, title + family, 'Family, Given',
initial + family, given name alone); most relatives are introduced by a cue and then repeated bare, and
some appear with no cue at all, as they do in real notes. The name lists are apart from the demo's and
from anything the scrubber knows. Clinical filler includes eponyms, doses, scores and codes that a
scrubber must keep.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

GIVEN = ("Maria", "Wei", "Aisha", "Olga", "Kwame", "Priya", "Diego", "Fatima", "Hiroshi", "Ingrid", "Tomasz",
         "Lucia", "Amara", "Sven", "Nadia", "Rafael", "Yuki", "Chidi", "Elena", "Omar", "Brigid", "Thanh",
         "Kofi", "Svetlana", "Mateo", "Leila", "Arjun", "Greta", "Jamal", "Siobhan", "Ravi", "Noor")
FAMILY = ("Okafor", "Nguyen", "Kowalski", "Haddad", "Lindqvist", "Mbeki", "Tanaka", "Ferreira", "O'Brien",
          "Petrov", "Chatterjee", "Mueller", "Alvarez", "Osei", "Nakamura", "Rossi", "Delacroix", "Ivanova",
          "McAllister", "Abiodun", "Sorensen", "Yilmaz", "Castillo", "Brennan", "Achterberg", "Wozniak")
RELATIONS = ("daughter", "son", "wife", "husband", "sister", "brother", "niece", "neighbour", "partner")
STREETS = ("Maple", "Harbor View", "Chestnut", "Willow Creek", "Sycamore", "Beacon", "Lakeshore", "Orchard")
SUFFIXES = ("Street", "St", "Avenue", "Ave", "Road", "Drive", "Lane", "Court", "Boulevard")
CITIES = (("Portland", "OR"), ("Dayton", "OH"), ("Madison", "WI"), ("Boise", "ID"), ("Salem", "MA"))
CLINICAL = (
    "Blood pressure 132/84, heart rate 78.", "HbA1c 7.2% on metformin 500 mg twice daily.",
    "Known Parkinson's disease, stable on levodopa.", "History of Hodgkin lymphoma in remission.",
    "Foley catheter removed on day 2.", "Apgar scores 8 and 9.", "Gleason score 3+4, stage T2N0M0.",
    "Lungs clear to auscultation bilaterally.", "Chest CT shows a spiculated pulmonary nodule measuring 14 mm "
    "in the right upper lobe.", "No suspicious nodule on the recent scan.", "Plan to follow up in 3 months.",
    "Creatinine 1.1 mg/dL, sodium 139 mmol/L.", "Referred to Cardiology for Holter monitoring.",
    "Denies chest pain, dyspnea or fever.", "Grade 2 diastolic dysfunction on echo.",
    "Started on 40 mg atorvastatin nightly.", "ICD-10 E11.9 documented.", "Glasgow Coma Scale 15.",
    "Continue current management.", "Encouraged regular exercise and a balanced diet.",
    "Medication list reviewed and reconciled.", "Return sooner if symptoms worsen.",
)


@dataclass(frozen=True)
class LabelledNote:
    """One note as segments, and the identifiers an EHR would list for its patient."""

    segments: tuple[tuple[str, str | None], ...]
    patient_id: str
    identifiers: tuple[str, ...]  # name, birth date, address: the patient's identifier columns

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.segments)


def _phone(r: np.random.Generator) -> str:
    a, b, c = int(r.integers(201, 990)), int(r.integers(200, 999)), int(r.integers(0, 10000))
    forms = (f"({a}) {b}-{c:04d}", f"{a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}", f"+1 {a} {b} {c:04d}",
             f"{a}{b}{c:04d}", f"+44 20 {b}{c % 10} {c:04d}", f"{a}-{b}-{c:04d} ext. {c % 900 + 100}")
    return str(r.choice(forms))


def _date(r: np.random.Generator, day: dt.date) -> str:
    forms = (day.strftime("%m/%d/%Y"), day.isoformat(), day.strftime("%d %b %Y"), day.strftime("%B %d, %Y"),
             f"{day.month}/{day.day}/{day.year % 100:02d}", day.strftime("%d.%m.%Y"))
    return str(r.choice(forms))


def _name(r: np.random.Generator, given: str, family: str) -> str:
    forms = (f"{given} {family}", f"{family}, {given}", f"{given[0]}. {family}", given)
    return str(r.choice(forms, p=(0.4, 0.2, 0.2, 0.2)))


def labelled_notes(n: int, seed: int = 0) -> list[LabelledNote]:
    """`n` notes with planted PHI (see the module docstring), reproducible from `seed`."""
    r = np.random.default_rng(seed)
    notes = []
    for i in range(n):
        given, family = str(r.choice(GIVEN)), str(r.choice(FAMILY))
        birth = dt.date(1930, 1, 1) + dt.timedelta(days=int(r.integers(0, 70 * 365)))
        visit = dt.date(2015, 1, 1) + dt.timedelta(days=int(r.integers(0, 9 * 365)))
        city, state = CITIES[int(r.integers(len(CITIES)))]
        address = f"{int(r.integers(1, 9999))} {r.choice(STREETS)} {r.choice(SUFFIXES)}"
        mrn = f"{int(r.integers(0, 10**8)):08d}"
        seg: list[tuple[str, str | None]] = []
        title = str(r.choice(("Mr.", "Ms.", "Mrs.")))
        opening = int(r.integers(4))
        if opening == 0:
            seg += [(f"{title} ", None), (family, "NAME"), (" was seen in clinic on ", None),
                    (_date(r, visit), "DATE"), (". ", None)]
        elif opening == 1:
            seg += [("Patient: ", None), (_name(r, given, family), "NAME"), (", DOB ", None),
                    (_date(r, birth), "DATE"), (", MRN: ", None), (mrn, "ID"), (". ", None)]
        elif opening == 2:
            seg += [(given, "NAME"), (" is a ", None), (str(int(r.integers(90, 104))), "AGE"),
                    ("-year-old seen for follow-up. ", None)]
        else:
            seg += [("Follow-up visit. ", None)]
        for k in r.permutation(len(CLINICAL))[: int(r.integers(2, 5))]:
            seg.append((CLINICAL[k] + " ", None))
        rel_given, rel_family = str(r.choice(GIVEN)), str(r.choice(FAMILY))
        relation = str(r.choice(RELATIONS))
        style = int(r.integers(5))
        if style == 0:
            seg += [(f"Her {relation} ", None), (rel_given, "NAME"), (" (", None), (_phone(r), "PHONE"),
                    (") was present. ", None), (rel_given, "NAME"), (" will bring the medication list. ", None)]
        elif style == 1:
            seg += [(f"Emergency contact: {relation} ", None), (f"{rel_given} {rel_family}", "NAME"),
                    (", cell ", None), (_phone(r), "PHONE"), (". ", None)]
        elif style == 2:
            seg += [("Next of kin: ", None), (f"{rel_family}, {rel_given}", "NAME"), (", e-mail ", None),
                    (f"{rel_given.lower()}.{rel_family.lower().replace(chr(39), '')}@example.com", "EMAIL"),
                    (". ", None)]
        elif style == 3:  # no cue at all: the hard case
            seg += [(rel_given, "NAME"), (" checks on the patient daily and can be reached at ", None),
                    (_phone(r), "PHONE"), (". ", None)]
        else:
            seg += [("Lives at ", None), (address, "ADDRESS"), (", ", None), (city, "ADDRESS"), (", ", None),
                    (f"{state} ", None), (str(int(r.integers(10000, 99999))), "ADDRESS"), (" with her ", None),
                    (f"{relation} ", None), (rel_given, "NAME"), (". ", None)]
        extra = int(r.integers(4))
        if extra == 0:
            seg += [("Records at ", None), (f"https://portal.example-health.org/p/{mrn}", "URL"), (". ", None)]
        elif extra == 1:
            seg += [("Insurance ID ", None), (f"XJH{int(r.integers(10**6, 10**7))}", "ID"),
                    ("; accession ", None), (f"RX{int(r.integers(10**4, 10**5))}", "ID"), (". ", None)]
        elif extra == 2:
            seg += [("Fax results to ", None), (_phone(r), "PHONE"), (" or ", None),
                    (f"clinic{int(r.integers(1, 99))}@hospital.org", "EMAIL"), (". ", None)]
        else:
            seg += [("Next appointment ", None), (_date(r, visit + dt.timedelta(days=90)), "DATE"), (". ", None)]
        staff_given, staff_family = str(r.choice(GIVEN)), str(r.choice(FAMILY))
        sign = int(r.integers(4))
        if sign == 0:
            seg += [("Discussed with Dr. ", None), (staff_family, "NAME"), (".", None)]
        elif sign == 1:
            seg += [("Signed: ", None), (f"{staff_given} {staff_family}", "NAME"), (", MD", None)]
        elif sign == 2:
            seg += [("Electronically signed by ", None), (f"{staff_given[0]}. {staff_family}", "NAME"),
                    (", RN on ", None), (_date(r, visit), "DATE")]
        else:
            seg += [("Seen with Dr ", None), (f"{staff_given} {staff_family}", "NAME"), (" from oncology.", None)]
        notes.append(LabelledNote(tuple(seg), f"P{i:05d}", (f"{given} {family}", birth.isoformat(),
                                                          f"{address}, {city}, {state}")))
    return notes


TOKEN = re.compile(r"[A-Za-z0-9]+")
# typed placeholders of each scrubber, and '90+' (the Safe Harbor age category) as a placeholder too
PLACEHOLDER = re.compile(r"\[[A-Z]+\]|\{\{[A-Z_]+\}\}|\*+|<[A-Z_]+>|\b90\+")


def _tokens(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(), m.start(), m.end()) for m in TOKEN.finditer(text)]


def score(notes: list[LabelledNote], outputs: list[str]) -> dict:
    """Per category: items, recall, removed tokens and token precision; clinical tokens lost overall."""
    found, items = defaultdict(int), defaultdict(int)
    removed_phi, removed_clean, clean_total = defaultdict(int), 0, 0
    for note, out in zip(notes, outputs, strict=True):
        text = note.text
        tokens = _tokens(text)
        kept_tokens = [t for t, _, _ in _tokens(PLACEHOLDER.sub(" ", out))]
        matcher = difflib.SequenceMatcher(None, [t for t, _, _ in tokens], kept_tokens, autojunk=False)
        kept = set()
        for block in matcher.get_matching_blocks():
            kept.update(range(block.a, block.a + block.size))
        spans, at = [], 0
        for seg, category in note.segments:
            spans.append((at, at + len(seg), category))
            at += len(seg)
        owner = []
        for _, start, _ in tokens:
            owner.append(next(i for i, (a, b, _) in enumerate(spans) if a <= start < b))
        per_item = defaultdict(list)
        for i, item in enumerate(owner):
            per_item[item].append(i not in kept)
        for item, removed in per_item.items():
            category = spans[item][2]
            if category is None:
                removed_clean += sum(removed)
                clean_total += len(removed)
            else:
                items[category] += 1
                found[category] += all(removed)
                removed_phi[category] += sum(removed)
    total_removed = sum(removed_phi.values()) + removed_clean
    result = {c: {"items": items[c], "recall": round(found[c] / items[c], 4)} for c in sorted(items)}
    result["all_phi"] = {"items": sum(items.values()), "recall": round(sum(found.values()) / sum(items.values()), 4),
                         "token_precision": round(sum(removed_phi.values()) / max(total_removed, 1), 4)}
    result["clinical_tokens_lost"] = round(removed_clean / max(clean_total, 1), 4)
    return result
