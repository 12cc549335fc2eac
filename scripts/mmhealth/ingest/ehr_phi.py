"""PHI patterns for free-text notes: what a note may hold about anyone, not only the subject's own identifiers.

`scrub_phi(text)` replaces, in this order, e-mails, URLs, ids written after a label (MRN, account, SSN,
accession, ...), long digit runs and letter+digit ids, phone and fax numbers, street addresses and ZIP
codes, dates, ages over 89, and names, with typed placeholders. Names are found by their cues: a title
(`Dr.`, `Mrs.`), a credential (`, MD`, `RN`), a relation (`his daughter Anna`), a label (`Name:`,
`Contact:`, `Signed:`) or a `Family, Given` pair after one of them; each name found is then removed wherever
else the note repeats it, so 'daughter Anna ... Anna will call' loses both. Last, a given name with no cue
at all ('Elena checks on him daily') is found in a dictionary: the given names of every Latin-script locale
of Faker's person providers (~16,000), less common English words ('Will', 'Grace', 'Hope') and eponyms
before "'s disease". What it cannot see: an uncued family name or an uncued given name missing from that
dictionary (recall on the benchmark's labelled set is in README's privacy section).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re

NAME = r"[A-Z](?:'[A-Z])?[a-z]+(?:[A-Z][a-z]+)?(?:-[A-Z]?[a-z]+)?"  # Anna, O'Brien, McAllister, Mary-Ann
INITIAL = r"[A-Z]\."
# a person's name: up to four parts, initials allowed ('J. Smith', 'Mary-Ann O'Neil', 'John Q. Public')
PERSON = rf"(?:{NAME}|{INITIAL})(?:\s+(?:{NAME}|{INITIAL})){{0,3}}"
TITLES = r"(?:Dr|Doctor|Mr|Mrs|Ms|Miss|Mx|Prof|Professor|Nurse|Sister|Rev|Sr|Fr)"
CREDENTIALS = r"(?:MD|M\.D\.|DO|RN|NP|PA-C|PA|PhD|MBBS|FRCP|LPN|CNA|PharmD|DPM|MSW|LCSW)"
RELATIONS = (r"(?:wife|husband|spouse|partner|son|daughter|mother|father|mom|dad|brother|sister|sibling|"
             r"aunt|uncle|niece|nephew|cousin|grandson|granddaughter|grandmother|grandfather|friend|"
             r"neighbou?r|caregiver|carer|guardian|fianc[eé]e?|stepson|stepdaughter|child|girlfriend|boyfriend)")
LABELS = (r"(?:name|patient|pt|contact|emergency contact|next of kin|nok|signed|signed by|electronically signed by|"
          r"dictated by|transcribed by|attending|resident|physician|provider|pcp|referring|referred by|seen by|"
          r"cc|author|nurse|surgeon|consultant|therapist|reviewed by|discussed with|spoke with|called)")
# words that look like names after a cue but are clinical text (kept: they carry the signal models use)
NOT_NAMES = frozenset(re.findall(r"\S+", """The A An This That He She They His Her Their It Patient Pt Today Yesterday Tomorrow
No Yes Not None And Or But With Without Per Plan Follow Return Chest Imaging Labs Lab Blood Heart Lungs
Abdomen Medication Medications History Exam Assessment Impression Reports Denies Known Continue Refer
Referral Discussed Reviewed Clinic Hospital Emergency Department Ward Unit Room Team Service Oncology
Cardiology Radiology Surgery Medicine Primary Care Office Phone Fax Email Home Work Cell Mobile On In At
For From To Of By As Is Was Will Has Had Who Which When Where Also Please Called Visit Visited Present
Presents Seen Came Brought States Stated Says Said Agrees Agreed Is Are Were Be Been Being Mild Moderate
Severe Left Right Upper Lower Middle Lobe CT MRI ECG EKG BP HR Jan Feb Mar Apr May Jun Jul Aug Sep Sept Oct
Nov Dec January February March April June July August September October November December Monday Tuesday
Wednesday Thursday Friday Saturday Sunday Street Avenue Road"""))

# given names that are far likelier English words or eponyms in a clinical note: kept by the dictionary pass
WORD_NAMES = frozenset(re.findall(r"\S+", """Will May June Grace Mark Hope Faith Joy Rose Bell Wilson Graves Major
Page Sage Dawn Summer Autumn Winter Spring Chase Dean Guy Art Gene Pat Sue Don Bill Frank Ray Sunny Angel Star
Rich Royal Max Amber Holly Ivy Iris Jade Ruby Pearl Crystal Olive Penny Honey Lane Hunter Mason Cash Price
Case Young Love Golden Long Short Brown Green Gray Grey White Black Young Baker Cook Miller Carter Early
Ward Hall King Page Marshall Stone Rock Forest River Sky Storm Mercy Constance Prudence Patience Charity
Harmony Melody Unity Trinity Destiny Serenity Justice Liberty Glory Victory Precious Blessing Gift Wisdom
Addison Parkinson Hodgkin Crohn Cushing Graves Hashimoto Barrett Bell Wernicke Korsakoff Alzheimer Kaposi
Huntington Tourette Asperger Down Turner Marfan Raynaud Sjogren Paget Guillain Barre Foley Holter Apgar
Gleason Glasgow Babinski Murphy Homan Kernig Brudzinski Trendelenburg Romberg Allen Phalen Tinel Lachman"""))
EPONYM_AFTER = (r"(?!'s\s+(?:disease|syndrome|sign|palsy|test|score|scale|reflex|ulcer|sarcoma|lymphoma|"
                r"phenomenon|maneuver|manoeuvre|triad|criteria|fracture|node|cyst|catheter|monitor))")

SUBSTITUTIONS: list[tuple[re.Pattern[str], str]] = [(re.compile(p, flags), tag) for p, flags, tag in (
    (r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+", 0, "[EMAIL]"),
    (r"\b(?:https?://|ftp://|www\.)[^\s<>\"]+[^\s<>\".,;:!?)]", re.IGNORECASE, "[URL]"),
    (r"\b\d{3}-\d{2}-\d{4}\b", 0, "[ID]"),  # SSN before phones: 3-2-4 is not a phone
    # an id after its label: 'MRN: 00123', 'Acct #A-99812', 'SSN 123456789', 'Accession no. RX5521'
    (r"\b(?:MRN|MR#|medical record(?: number| no\.?)?|record(?: number| no\.?| #)|acct|account|ssn|"
     r"accession|encounter|visit|patient id|pt id|id|insurance|member|policy|license|licence|"
     r"health card|nhs(?: number| no\.?)?|case|specimen|order|claim|device|serial)"
     r"(?:\s*(?:number|no\.?|num|#|id))?\s*[:#=]?\s*((?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{3,})",
     re.IGNORECASE, "ID1"),
    # phones and faxes: (415) 555-0132, 415-555-0132, 415.555.0132, +1 415 555 0132, +44 20 7946 0958
    (r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)\s?|\d{2,4}[\s.-])\d{3,4}[\s.-]\d{3,4}"
     r"(?:\s?(?:x|ext\.?)\s?\d{1,5})?(?![\w])", re.IGNORECASE, "[PHONE]"),
    (r"(?<![\w+])\+\d{1,3}(?:[\s.-]?\d{2,5}){2,4}\b", 0, "[PHONE]"),
    (r"\b\d{10}\b", 0, "[PHONE]"),
    # street addresses: '1234 Oak Street', '55 W. Elm Ave, Apt 4', 'P.O. Box 114'
    (r"\b\d{1,6}\s+(?:[NSEW]\.?\s+)?(?:[A-Z][a-z]+\.?\s+){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Drive|Dr|"
     r"Boulevard|Blvd|Court|Ct|Way|Place|Pl|Terrace|Ter|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Close|"
     r"Crescent|Row|Trail)\b\.?(?:,?\s+(?:Apt|Apartment|Unit|Suite|Ste|Flat|#)\.?\s*\w+)?", 0, "[ADDRESS]"),
    (r"\bP\.?\s?O\.?\s+Box\s+\d+", re.IGNORECASE, "[ADDRESS]"),
    (r"\b[A-Z]{2}\s+\d{5}(?:-\d{4})?\b", 0, "[ADDRESS]"),  # state + ZIP
    (r"(?<=\[ADDRESS\])[\s,]+\d{5}(?:-\d{4})?\b", 0, " [ADDRESS]"),  # a ZIP after an address already removed
    # ids without a label: letters and a long digit run ('MRN0012345', 'AB-778812'), or a long digit run
    (r"\b[A-Z]{1,5}-?\d{5,}\b|\b\d{7,}\b", 0, "[ID]"),
    # dates: ISO, numeric both orders, month names; a time after a date goes with it
    (r"\b(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2}))(?:[T ]\d{1,2}:\d{2}(?::\d{2})?)?\b",
     0, "[DATE]"),
    (r"\b(?:\d{1,2}(?:st|nd|rd|th)?\s+)?(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?"
     r"(?:\s+\d{1,2}(?:st|nd|rd|th)?)?,?\s+\d{4}\b", 0, "[DATE]"),
    (r"\b(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?\s+\d{1,2}(?:st|nd|rd|th)?\b", 0,
     "[DATE]"),
    # HIPAA Safe Harbor: an age over 89 becomes '90+'
    (r"\b(?:9\d|1[0-1]\d)(?=(?:\s*|-)(?:years?|yrs?|yo|y/o|y\.o\.)\b)", re.IGNORECASE, "90+"),
)]

CUED_NAMES = [re.compile(p) for p in (
    rf"\b{TITLES}\.?\s+(?P<n>{PERSON})",
    rf"(?P<n>{PERSON}),?\s+{CREDENTIALS}\b",
    rf"(?i:\b{RELATIONS})(?:\s*\([^)]*\))?,?\s+(?i:(?:is\s+|was\s+|named\s+|called\s+))?(?P<n>{PERSON})",
    rf"(?i:\b{LABELS})\s*[:,-]?\s+(?P<n>{NAME},\s+{NAME}|{PERSON})",
    rf"(?i:\b{LABELS})\s*:\s*(?P<n>{NAME},\s+{NAME})",
)]


@functools.cache
def given_names() -> frozenset[str]:
    """Given names of every Latin-script locale of Faker's person providers, less `WORD_NAMES`."""
    import faker.providers.person as person  # only its name lists are used

    names: set[str] = set()
    for module in pkgutil.iter_modules(person.__path__):
        provider = importlib.import_module(f"{person.__name__}.{module.name}").Provider
        for attr in ("first_names", "first_names_male", "first_names_female", "first_romanized_names"):
            value = getattr(provider, attr, None)  # a list, a weighted dict, or absent
            if isinstance(value, dict | list | tuple | set | frozenset):
                names.update(n for n in value if isinstance(n, str) and n.isascii() and n.isalpha() and len(n) > 2)
    return frozenset(names - WORD_NAMES - NOT_NAMES)


DICTIONARY_CANDIDATE = re.compile(rf"(?<![\w\[])[A-Z][a-z]{{2,}}\b{EPONYM_AFTER}")


def _name_parts(found: str) -> list[str]:
    """The parts of a cued name worth removing elsewhere in the note (no clinical words, no initials)."""
    return [p for p in re.split(r"[\s,]+", found) if len(p) > 2 and p not in NOT_NAMES]


def find_names(text: str) -> set[str]:
    """Name parts announced by a cue anywhere in the text."""
    names: set[str] = set()
    for pattern in CUED_NAMES:
        for match in pattern.finditer(text):
            parts = re.split(r"(\s+|,\s*)", match.group("n"))
            kept = []
            for part in parts[::2]:  # stop at the first clinical word: 'Dr. Lee Reviewed' -> 'Lee'
                if part in NOT_NAMES:
                    break
                kept.append(part)
            names.update(_name_parts(" ".join(kept)))
    return names


def scrub_phi(text: str) -> str:
    """The note with PHI patterns replaced by typed placeholders ([NAME], [PHONE], [EMAIL], [ID], [URL],
    [ADDRESS], [DATE], and '90+' for ages over 89)."""
    names = find_names(text)  # before the other passes: a cue may sit next to a phone or an id
    for pattern, tag in SUBSTITUTIONS:
        if tag == "ID1":
            text = pattern.sub(lambda m: m.group()[:m.start(1) - m.start()] + "[ID]", text)
        else:
            text = pattern.sub(tag, text)
    if names:
        alternation = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
        text = re.sub(rf"(?<![\w\[])(?:{alternation})(?:'s)?(?![\w\]])", "[NAME]", text)
        # 'J. [NAME]' -> '[NAME]': an initial left before a removed name is part of it
        text = re.sub(r"\b[A-Z]\.\s+(?=\[NAME\])", "", text)
    known = given_names()
    return DICTIONARY_CANDIDATE.sub(lambda m: "[NAME]" if m.group() in known else m.group(), text)
