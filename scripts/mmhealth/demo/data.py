"""Deterministic fake hospital exports (DICOM CT, FASTA, EHR CSVs, labels) for demos and tests.

Every subject carries independent latent binary factors (lesion, motif, finding, diabetes) that the data
encode noisily; labels/<task>.csv exposes them. Same seed -> byte-identical CSV/FASTA and identical DICOM
content. identifiers.json lists every direct identifier written, so leak tests can grep pipeline outputs.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import gzip
import hashlib
import io
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid
from tqdm import tqdm

log = logging.getLogger("make_demo_data")

TASKS = ("lesion_ct", "variant_dna", "finding_note", "diabetes_ehr", "composite_risk")
MANAGED = ("dicom", "fasta", "ehr", "labels", "identifiers.json", "phi_audit")  # what a re-run may replace
MOTIF = "GATTACAGATTA"
POOL_SEED_OFFSET = 1_000_003  # the unlabeled pool's seed is the demo seed plus this: streams of its own
TISSUE_HU, LUNG_HU, AIR_HU, NOISE_HU = 40.0, -820.0, -1000.0, 12.0
RESCALE_INTERCEPT = -1024
AORTA = (-0.04, 0.12, 0.035)  # centre x, y and radius as image fractions from the image centre
# Name parts are >= 5 letters and no English word, so a leak grep has no false hits in template text.
GIVEN = {"M": ("Anselm", "Barnaby", "Cedric", "Desmond", "Evander", "Fabian", "Gideon", "Horatio", "Ignatius",
               "Jasper", "Leopold", "Magnus", "Nikolai", "Oswald", "Percival", "Quentin", "Rupert", "Sebastian",
               "Thaddeus", "Ulrich", "Vincenzo", "Wolfgang", "Xavier", "Zebulon"),
         "F": ("Annelise", "Beatrix", "Cordelia", "Delphine", "Evangeline", "Fiorella", "Genevieve", "Henrietta",
               "Isadora", "Josephine", "Katarina", "Lucinda", "Marisol", "Nadezhda", "Ottilie", "Philippa",
               "Rosalind", "Seraphina", "Theodora", "Ursula", "Valentina", "Wilhelmina", "Ximena", "Zenobia")}
FAMILY = ("Abernathy", "Bjornsson", "Castellano", "Dragomir", "Esterhazy", "Fitzgerald", "Gallagher",
          "Harrington", "Ivanova", "Jankowski", "Kowalczyk", "Lindqvist", "Montgomery", "Nakamura", "Okonkwo",
          "Pemberton", "Quintero", "Rasmussen", "Szczepanski", "Thorvaldsen", "Underhill", "Vasquez",
          "Whitaker", "Yamaguchi", "Zielinski", "Oyelaran", "Marchetti", "Delacroix", "Haverford", "Brennagh")
STREETS = ("Larkspur", "Juniper", "Wexford", "Calloway", "Brookhaven", "Tamarind", "Ravensworth", "Kestrel")
STREET_KINDS = ("Street", "Avenue", "Lane", "Road", "Court")
CITIES = (("Springfield", "IL"), ("Fairview", "OR"), ("Riverton", "WY"), ("Ashland", "KY"), ("Milford", "CT"))
NOISE_ICD10 = ("I10", "J45.909", "K21.9", "M54.5", "E78.5", "F41.1", "N39.0", "G43.909", "R51.9")
LAB_UNITS = {"GLUCOSE": "mg/dL", "HBA1C": "%", "CREATININE": "mg/dL", "SODIUM": "mmol/L"}
NAME_OPENINGS = ("{title} {family} was seen in clinic today.", "{given} {family} was seen for follow-up.",
                 "Patient {given} {family} presents for review.", "Spoke with {title} {family} by phone.")
DOB_OPENINGS = ("Patient {given} {family}, DOB {dob}, seen today.", "Identity confirmed with DOB {dob}.")
PLAIN_OPENINGS = ("Patient seen in clinic today.", "Follow-up visit.", "Outpatient review.",
                  "Telephone consultation completed.", "Routine visit for chronic conditions.")
ROUTINE = ("Blood pressure is well controlled on current medication.", "Reports mild lower back pain, improving.",
           "Lungs clear to auscultation bilaterally.", "Heart sounds regular, no murmurs.",
           "Denies chest pain, dyspnea or fever.", "Medication list reviewed and reconciled.",
           "Sleep and appetite are unchanged.", "Abdomen soft and non-tender.", "Vaccinations are up to date.",
           "Reflux symptoms controlled with diet changes.", "Encouraged regular exercise and a balanced diet.")
NEGATIVE_FINDING = ("Chest CT reviewed: no nodule or mass identified.", "Imaging shows no pulmonary nodule.",
                    "No suspicious nodule on the recent scan.")
FINDING = ("Chest CT shows a spiculated pulmonary nodule measuring {size} mm in the {lobe}.",
           "Imaging reveals an irregular {size} mm mass in the {lobe}, suspicious for malignancy.",
           "A {size} mm spiculated nodule in the {lobe} was noted; referral to thoracic oncology.",
           "Known {size} mm pulmonary mass in the {lobe}; biopsy is being arranged.")
LOBES = ("right upper lobe", "right lower lobe", "left upper lobe", "left lower lobe", "middle lobe")
CLOSINGS = ("Plan to follow up in three months.", "Return sooner if symptoms worsen.",
            "Continue current management.", "Labs ordered before the next visit.")


@dataclass(frozen=True)
class Lesion:
    """A round blob in pixel units of the generated image: centre, radius, HU above tissue, slice range."""
    row: float
    col: float
    radius: float
    contrast_hu: float
    first_slice: int
    last_slice: int


@dataclass(frozen=True)
class Subject:
    """One fake patient: identifiers, latent factors and the shape of its CT series."""
    index: int
    patient_id: str
    given: str
    family: str
    sex: str
    birth_date: dt.date
    address: str
    visit_date: dt.date
    accession: str
    series_number: int
    factors: dict[str, int]
    n_slices: int
    lesion: Lesion | None


def task_labels(subject: Subject) -> dict[str, int]:
    """The five task labels of a subject; composite needs two of image, dna and ehr factors."""
    f = subject.factors
    composite = int(f["lesion"] + f["motif"] + f["diabetes"] >= 2)
    return {"lesion_ct": f["lesion"], "variant_dna": f["motif"], "finding_note": f["finding"],
            "diabetes_ehr": f["diabetes"], "composite_risk": composite}


def _rng(seed: int, index: int, stream: str) -> np.random.Generator:
    """Independent stream per subject and modality, so one modality's draws never shift another's."""
    return np.random.default_rng([seed, index, sum(ord(c) << (8 * i) for i, c in enumerate(stream))])


def _balanced_factor(rng: np.random.Generator, n: int) -> np.ndarray:
    """Exactly half (rounded down) positives in random order: balanced labels even for tiny demos."""
    return rng.permutation(np.arange(n) < n // 2).astype(int)


def _pick(rng: np.random.Generator, n: int, fraction: float) -> set[int]:
    """Exactly round(n * fraction) (at least one) of range(n): every variant shows up even in tiny demos."""
    return {int(i) for i in rng.permutation(n)[: max(1, round(n * fraction))]}


def _lesion(rng: np.random.Generator, image_size: int, n_slices: int) -> Lesion:
    """A soft-tissue-dense blob inside the body (lung or mediastinum, clear of the spine) on most slices."""
    faint = rng.random() < 0.15  # faint ones sit in the mediastinum, where they contrast least
    while True:
        x, y = rng.uniform(-0.7, 0.7, 2)  # in units of the body ellipse's semi-axes
        clear_of_aorta = (x - AORTA[0] / 0.40) ** 2 + (y - AORTA[1] / 0.32) ** 2 > 0.25**2
        if x * x + y * y < 0.45 and y < 0.35 and clear_of_aorta and (abs(x) < 0.1 or not faint):
            break
    radius = max(1.5, image_size * rng.uniform(0.035, 0.05 if faint else 0.09))
    contrast = rng.uniform(25, 45) if faint else rng.uniform(60, 120)
    span = max(1, round(n_slices * rng.uniform(0.7, 1.0)))
    first = int(rng.integers(0, n_slices - span + 1))
    # Body ellipse semi-axes are 0.40/0.32 of the image, centred (see _ct_volume).
    return Lesion(row=image_size * (0.5 + 0.32 * y), col=image_size * (0.5 + 0.40 * x), radius=radius,
                  contrast_hu=float(contrast), first_slice=first, last_slice=first + span - 1)


def plan_subjects(n_subjects: int, seed: int = 0, image_size: int = 64,
                  slices: tuple[int, int] = (8, 16)) -> list[Subject]:
    """All random choices about who the subjects are; pure in (n_subjects, seed, image_size, slices)."""
    rng = np.random.default_rng([seed, 7])
    ids = rng.choice(9_000_000, size=n_subjects, replace=False) + 1_000_000
    factors = {name: _balanced_factor(rng, n_subjects) for name in ("lesion", "motif", "finding", "diabetes")}
    subjects = []
    for i in range(n_subjects):
        r = _rng(seed, i, "who")
        sex = "F" if r.random() < 0.5 else "M"
        birth = dt.date(1935, 1, 1) + dt.timedelta(days=int(r.integers(0, 65 * 365)))
        visit = dt.date(2018, 1, 1) + dt.timedelta(days=int(r.integers(0, 6 * 365)))
        city, state = CITIES[r.integers(len(CITIES))]
        address = (f"{r.integers(10, 9999)} {STREETS[r.integers(len(STREETS))]} "
                   f"{STREET_KINDS[r.integers(len(STREET_KINDS))]}, {city}, {state} {r.integers(10000, 99999)}")
        n_slices = int(r.integers(slices[0], slices[1] + 1))
        f = {name: int(values[i]) for name, values in factors.items()}
        lesion = _lesion(_rng(seed, i, "lesion"), image_size, n_slices) if f["lesion"] else None
        accession, series_number = f"ACC{r.integers(10**8, 10**9)}", int(r.integers(1, 4))
        subjects.append(Subject(i, f"MRN{ids[i]:07d}", str(r.choice(GIVEN[sex])), str(r.choice(FAMILY)), sex,
                                birth, address, visit, accession, series_number, f, n_slices, lesion))
    return subjects


def ct_volume(subject: Subject, image_size: int, seed: int) -> np.ndarray:
    """HU volume (slices, rows, cols): air, elliptical body, lungs, spine, aorta, and the lesion if any.

    A third of the series are contrast-enhanced: a bright round aorta in both classes, so "any bright blob"
    is not the answer and a model has to learn where lesions are.
    """
    rng = _rng(seed, subject.index, "ct")
    aorta_hu = rng.uniform(150, 260) if rng.random() < 1 / 3 else TISSUE_HU
    yy, xx = np.mgrid[0:image_size, 0:image_size] / image_size - 0.5
    body = (xx / 0.40) ** 2 + (yy / 0.32) ** 2 <= 1
    spine = (xx / 0.06) ** 2 + ((yy - 0.22) / 0.06) ** 2 <= 1
    aorta = (xx - AORTA[0]) ** 2 + (yy - AORTA[1]) ** 2 <= AORTA[2] ** 2
    rr, cc = np.mgrid[0:image_size, 0:image_size]
    volume = np.empty((subject.n_slices, image_size, image_size), dtype=np.float32)
    for k in range(subject.n_slices):
        lung_scale = 1.0 - 0.25 * k / max(1, subject.n_slices - 1)  # lungs narrow toward the abdomen
        lungs = ((np.abs(xx) - 0.2) / (0.13 * lung_scale)) ** 2 + ((yy + 0.03) / (0.2 * lung_scale)) ** 2 <= 1
        hu = np.where(body, TISSUE_HU + rng.normal(0, NOISE_HU, body.shape), AIR_HU + rng.normal(0, 5, body.shape))
        hu[lungs & body] = LUNG_HU + rng.normal(0, 30, int((lungs & body).sum()))
        hu[spine] = rng.uniform(450, 700) + rng.normal(0, 40, int(spine.sum()))
        hu[aorta] = aorta_hu + rng.normal(0, NOISE_HU, int(aorta.sum()))
        lesion = subject.lesion
        if lesion and lesion.first_slice <= k <= lesion.last_slice:
            half = (lesion.last_slice - lesion.first_slice) / 2 + 1
            depth = (k - (lesion.first_slice + lesion.last_slice) / 2) / half
            radius = max(1.0, lesion.radius * np.sqrt(max(0.3, 1 - depth**2)))  # a sphere, cut by slices
            blob = (rr - lesion.row) ** 2 + (cc - lesion.col) ** 2 <= radius**2
            hu[blob] = TISSUE_HU + lesion.contrast_hu + rng.normal(0, NOISE_HU, int(blob.sum()))
        volume[k] = hu
    return volume


def _uid(seed: int, *parts: object) -> str:
    """A valid, reproducible UID: pydicom's hash-based generator fed a deterministic entropy source."""
    return generate_uid(entropy_srcs=[f"mmhealth-demo:{seed}", *map(str, parts)])


def series_header(subject: Subject, image_size: int, seed: int, rng: np.random.Generator) -> Dataset:
    """The elements shared by every slice of a subject's CT series (file meta included)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet, ds.ImageType = "ISO_IR 100", ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = subject.visit_date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber, ds.Modality, ds.Manufacturer = subject.accession, "CT", "MMHEALTH DEMO"
    ds.InstitutionName, ds.StudyDescription, ds.SeriesDescription = "Demo General Hospital", "CT CHEST", "AXIAL"
    ds.PatientName, ds.PatientID = f"{subject.family}^{subject.given}", subject.patient_id
    ds.PatientBirthDate, ds.PatientSex = subject.birth_date.strftime("%Y%m%d"), subject.sex
    ds.PatientAddress, ds.BodyPartExamined, ds.KVP = subject.address, "CHEST", 120
    thickness = float(rng.choice([1.25, 2.5, 2.5, 5.0]))
    ds.SliceThickness = ds.SpacingBetweenSlices = thickness
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
        _uid(seed, subject.patient_id, kind) for kind in ("study", "series", "for"))
    ds.StudyID, ds.SeriesNumber, ds.AcquisitionNumber = "1", subject.series_number, 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = image_size
    ds.PixelSpacing = [float(rng.choice([0.625, 0.7, 0.78125]))] * 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = RESCALE_INTERCEPT, 1, "HU"
    return ds


def write_series(subject: Subject, volume: np.ndarray, folder: Path, seed: int, rng: np.random.Generator,
                 rle: bool, suffix: str) -> int:
    """Write one file per slice: z steps of SliceThickness, stored = HU + 1024 as int16. Returns files."""
    ds = series_header(subject, volume.shape[1], seed, rng)
    thickness, spacing = float(ds.SliceThickness), float(ds.PixelSpacing[0])
    z0 = float(np.round(rng.uniform(-400, -100), 2))
    descending = rng.random() < 0.3  # some scanners number instances from the top: order by position
    origin = round(-spacing * (volume.shape[1] - 1) / 2, 4)
    stored = np.clip(np.rint(volume) - RESCALE_INTERCEPT, -32768, 32767).astype(np.int16)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(volume.shape[0]):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(seed, subject.patient_id, "sop", k)
        ds.InstanceNumber = volume.shape[0] - k if descending else k + 1
        ds.SliceLocation = round(z0 + thickness * k, 4)
        ds.ImagePositionPatient = [origin, origin, ds.SliceLocation]
        if rle:  # pydicom's native encoder (same bytes everywhere); keep our UID instead of a random one
            ds.compress(RLELossless, arr=stored[k], encoding_plugin="pydicom", generate_instance_uid=False)
        else:
            ds.PixelData = stored[k].tobytes()
        ds.save_as(folder / f"IM{ds.InstanceNumber:04d}{suffix}", enforce_file_format=True)
    return volume.shape[0]


def write_dicom(subjects: list[Subject], out: Path, seed: int, image_size: int) -> dict[str, int]:
    """dicom/EXPORT_<nnnn>/SER<m>/IM<kkkk>[.dcm]; ~10% of series RLE Lossless. Returns file counts."""
    counts = {"series": 0, "files": 0, "rle_series": 0}
    pick_rng = np.random.default_rng([seed, 11])
    export_numbers = pick_rng.permutation(len(subjects)) + 1
    rle_series, dcm_series = _pick(pick_rng, len(subjects), 0.1), _pick(pick_rng, len(subjects), 0.2)
    for subject in tqdm(subjects, desc="dicom", unit="series", leave=False):
        rng = _rng(seed, subject.index, "dicom")
        rle, suffix = subject.index in rle_series, ".dcm" if subject.index in dcm_series else ""
        folder = out / "dicom" / f"EXPORT_{export_numbers[subject.index]:04d}" / f"SER{subject.series_number}"
        counts["files"] += write_series(subject, ct_volume(subject, image_size, seed), folder, seed, rng,
                                        rle, suffix)
        counts["series"] += 1
        counts["rle_series"] += int(rle)
    return counts


def _sequence(rng: np.random.Generator, length: int, motif_every: tuple[int, int] | None) -> str:
    """Random ACGT with a few N runs and soft-masked stretches; the motif planted every ~150-250 bp."""
    bases = np.array(list("ACGT"))[rng.integers(0, 4, length)]
    if motif_every:
        pos = int(rng.integers(0, motif_every[0]))
        while pos + len(MOTIF) <= length:
            copy = np.array(list(MOTIF))
            if rng.random() < 0.25:  # an imperfect copy, as in a real variant motif
                copy[rng.integers(len(MOTIF))] = "ACGT"[rng.integers(4)]
            bases[pos:pos + len(MOTIF)] = copy
            pos += int(rng.integers(*motif_every))
    for _ in range(int(rng.integers(0, 4))):
        start = int(rng.integers(0, length))
        bases[start:start + int(rng.integers(1, 12))] = "N"
    if rng.random() < 0.2:  # a soft-masked (lower-case) repeat region, as assemblers write them
        start = int(rng.integers(0, length - 200))
        stop = start + int(rng.integers(50, 200))
        bases[start:stop] = np.char.lower(bases[start:stop])
    return "".join(bases)


def write_fasta(subjects: list[Subject], out: Path, seed: int) -> dict[str, int]:
    """fasta/sample_<nnnn>.fa[.gz]: subjects grouped 1-3 per file, 1-3 records each. Returns counts."""
    rng = np.random.default_rng([seed, 13])
    order, groups, start = rng.permutation(len(subjects)), [], 0
    while start < len(order):
        size = int(rng.choice([1, 1, 1, 2, 3]))
        groups.append(order[start:start + size])
        start += size
    counts = {"files": 0, "gzipped_files": 0, "records": 0}
    (out / "fasta").mkdir(parents=True, exist_ok=True)
    gzipped = _pick(rng, len(groups), 1 / 3)
    for number, group in enumerate(groups, start=1):
        width, gz = int(rng.choice([60, 70, 80])), number - 1 in gzipped
        lines = []
        for index in group:
            subject = subjects[index]
            r = _rng(seed, subject.index, "dna")
            for j in range(1, int(r.integers(1, 4)) + 1):
                length = int(r.integers(1000, 3001))
                # Positives: the motif in the first record and most others, sparse in some (low allele
                # fraction); negatives: rare sparse decoys.
                if subject.factors["motif"] and (j == 1 or r.random() < 0.8):
                    seq = _sequence(r, length, (150, 250) if r.random() < 0.85 else (500, 800))
                else:
                    seq = _sequence(r, length, (900, 1400) if r.random() < 0.06 else None)
                lines.append(f">{subject.patient_id}|rec{j} targeted panel amplicon assembly len={length}")
                lines.extend(seq[i:i + width] for i in range(0, length, width))
                counts["records"] += 1
        data = ("\n".join(lines) + "\n").encode()
        path = out / "fasta" / f"sample_{number:04d}.fa{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(data, mtime=0) if gz else data)  # mtime=0: reproducible bytes
        counts["files"] += 1
        counts["gzipped_files"] += int(gz)
    return counts


def _stamp(day: dt.date, rng: np.random.Generator, spread_days: int = 120) -> str:
    """'YYYY-MM-DD HH:MM' near a visit day, in office hours."""
    offset = dt.timedelta(days=int(rng.integers(-spread_days, spread_days + 1)),
                          hours=int(rng.integers(7, 19)), minutes=int(rng.integers(0, 60)))
    return (dt.datetime.combine(day, dt.time()) + offset).strftime("%Y-%m-%d %H:%M")


def _lab_rows(subject: Subject, rng: np.random.Generator) -> list[list[str]]:
    """Glucose and HbA1c carry the diabetes signal (20% of diabetics well controlled); others are noise."""
    diabetic, controlled = subject.factors["diabetes"], rng.random() < 0.2
    means = {"GLUCOSE": (160.0, 35.0) if diabetic and not controlled else (120.0, 20.0) if diabetic
             else (100.0, 14.0),
             "HBA1C": (7.5, 1.0) if diabetic and not controlled else (6.4, 0.5) if diabetic else (5.4, 0.35),
             "CREATININE": (0.95, 0.2), "SODIUM": (140.0, 2.5)}
    digits = {"GLUCOSE": 0, "HBA1C": 1, "CREATININE": 2, "SODIUM": 0}
    rows = []
    for test, (mean, sd) in means.items():
        for _ in range(int(rng.integers(1, 4))):
            value = max(0.1, rng.normal(mean, sd))
            rows.append([subject.patient_id, test, f"{value:.{digits[test]}f}", LAB_UNITS[test],
                         _stamp(subject.visit_date, rng)])
    return rows


def _note_text(subject: Subject, rng: np.random.Generator, finding: bool) -> str:
    """A 20-60 word note; ~30% name the patient, some give the birth date."""
    names = {"title": "Mr." if subject.sex == "M" else "Ms.", "given": subject.given,
             "family": subject.family, "dob": subject.birth_date.isoformat()}
    roll = rng.random()
    pool = NAME_OPENINGS if roll < 0.26 else DOB_OPENINGS if roll < 0.33 else PLAIN_OPENINGS
    parts = [str(rng.choice(pool)).format(**names)]
    if finding:
        parts.append(str(rng.choice(FINDING)).format(size=int(rng.integers(8, 35)), lobe=rng.choice(LOBES)))
    elif rng.random() < 0.1:
        parts.append(str(rng.choice(NEGATIVE_FINDING)))
    body = rng.permutation(len(ROUTINE))
    for k in body[: int(rng.integers(3, 6))]:
        parts.append(ROUTINE[k])
    parts.append(str(rng.choice(CLOSINGS)))
    return " ".join(parts)


def write_ehr(subjects: list[Subject], out: Path, seed: int) -> dict[str, int]:
    """ehr/patients.csv, diagnoses.csv, labs.csv, notes.csv, rows in subject order. Returns row counts."""
    tables: dict[str, list[list[str]]] = {"patients": [], "diagnoses": [], "labs": [], "notes": []}
    for subject in subjects:
        r = _rng(seed, subject.index, "ehr")
        tables["patients"].append([subject.patient_id, f"{subject.given} {subject.family}",
                                   subject.birth_date.isoformat(), subject.sex, subject.address])
        codes = list(r.choice(NOISE_ICD10, size=int(r.integers(1, 4)), replace=False))
        if r.random() < (0.8 if subject.factors["diabetes"] else 0.08):
            codes.append("E11.9")
        tables["diagnoses"].extend(sorted([subject.patient_id, str(c), _stamp(subject.visit_date, r, 365)]
                                          for c in codes))
        tables["labs"].extend(sorted(_lab_rows(subject, r), key=lambda row: (row[4], row[1])))
        n_notes = int(r.integers(1, 5))
        described = subject.factors["finding"] and r.random() < 0.85
        finding_notes = set(r.choice(n_notes, size=int(r.integers(1, n_notes + 1)), replace=False)) if described \
            else set()
        notes = [[subject.patient_id, _stamp(subject.visit_date, r), _note_text(subject, r, k in finding_notes)]
                 for k in range(n_notes)]
        tables["notes"].extend(sorted(notes))
    headers = {"patients": ["patient_id", "name", "birth_date", "sex", "address"],
               "diagnoses": ["patient_id", "icd10", "charttime"],
               "labs": ["patient_id", "test", "value", "unit", "charttime"],
               "notes": ["patient_id", "charttime", "text"]}
    for name, rows in tables.items():
        _write_csv(out / "ehr" / f"{name}.csv", headers[name], rows)
    return {name: len(rows) for name, rows in tables.items()}


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    """CSV with '\\n' line ends and minimal quoting: the same bytes on every platform."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def identifiers(subjects: list[Subject], seed: int) -> dict[str, list[str]]:
    """Every direct identifier written anywhere, by kind, sorted and unique."""
    kinds: dict[str, set[str]] = {k: set() for k in ("patient_ids", "names", "name_parts", "birth_dates",
                                                     "addresses", "accession_numbers", "uids")}
    for s in subjects:
        kinds["patient_ids"].add(s.patient_id)
        kinds["names"].update({f"{s.given} {s.family}", f"{s.family}^{s.given}"})
        kinds["name_parts"].update({s.given, s.family})
        kinds["birth_dates"].update({s.birth_date.isoformat(), s.birth_date.strftime("%Y%m%d")})
        kinds["addresses"].add(s.address)
        kinds["accession_numbers"].add(s.accession)
        kinds["uids"].update(_uid(seed, s.patient_id, kind) for kind in ("study", "series", "for"))
        kinds["uids"].update(_uid(seed, s.patient_id, "sop", k) for k in range(s.n_slices))
    return {k: sorted(v) for k, v in kinds.items()}


def _prepare_out_dir(out: Path) -> None:
    """Replace a previous demo export; refuse to touch a folder that holds anything else."""
    if out.exists():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in MANAGED)
        if foreign:
            raise FileExistsError(f"{out}: not a demo export folder (holds {', '.join(foreign[:5])}); "
                                  "choose an empty or new folder")
        for name in MANAGED:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def plan_unlabeled(n_unlabeled: int, labeled: list[Subject], seed: int, image_size: int,
                   slices: tuple[int, int]) -> list[Subject]:
    """The unlabeled pool: subjects from their own seed (POOL_SEED_OFFSET), so the labelled subjects'
    draws do not depend on the pool, with patient ids distinct from the labelled ones."""
    pool = plan_subjects(n_unlabeled, seed + POOL_SEED_OFFSET, image_size, slices) if n_unlabeled else []
    taken, renamed = {s.patient_id for s in labeled}, []
    for subject in pool:
        number = int(subject.patient_id[3:])
        while f"MRN{number:07d}" in taken:
            number = 1_000_000 + (number - 999_999) % 9_000_000
        taken.add(f"MRN{number:07d}")
        renamed.append(dataclasses.replace(subject, patient_id=f"MRN{number:07d}"))
    return renamed


def write_unlabeled(pool: list[Subject], out: Path, seed: int, image_size: int) -> dict:
    """Exports of the unlabeled pool beside the labelled ones: own DICOM folders (POOL_<n>) and FASTA files
    (pool_<name>), rows appended to the EHR CSVs (whose earlier bytes stay as they were), no label rows."""
    pool_seed = seed + POOL_SEED_OFFSET
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        summary = {"dicom": write_dicom(pool, tmp, pool_seed, image_size), "fasta": write_fasta(pool, tmp, pool_seed),
                   "ehr": write_ehr(pool, tmp, pool_seed)}
        for folder in sorted((tmp / "dicom").iterdir()):
            shutil.move(folder, out / "dicom" / folder.name.replace("EXPORT_", "POOL_"))
        for path in sorted((tmp / "fasta").iterdir()):
            shutil.move(path, out / "fasta" / f"pool_{path.name}")
        for path in sorted((tmp / "ehr").glob("*.csv")):
            rows = path.read_text(encoding="utf-8").split("\n", 1)[1]
            with (out / "ehr" / path.name).open("a", encoding="utf-8") as target:
                target.write(rows)
    return summary


def generate_demo(out_dir: Path, n_subjects: int = 200, seed: int = 0, image_size: int = 64,
                  slices: tuple[int, int] = (8, 16), unlabeled: int = 0) -> dict:
    """Write the demo export under out_dir; return counts per modality and the label balance per task.

    `unlabeled` more subjects get exports but no label rows (data for the pretrain stage); the labelled
    subjects' files are the same with or without them (the EHR CSVs only gain rows at their end)."""
    if n_subjects < 2:
        raise ValueError(f"n_subjects must be at least 2, got {n_subjects}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    if not 1 <= slices[0] <= slices[1]:
        raise ValueError(f"slices must satisfy 1 <= min <= max, got {slices}")
    out = Path(out_dir)
    _prepare_out_dir(out)
    subjects = plan_subjects(n_subjects, seed, image_size, slices)
    summary: dict = {"subjects": n_subjects, "seed": seed}
    summary["dicom"] = write_dicom(subjects, out, seed, image_size)
    summary["fasta"] = write_fasta(subjects, out, seed)
    summary["ehr"] = write_ehr(subjects, out, seed)
    labels = [task_labels(s) for s in subjects]
    summary["labels"] = {}
    for task in TASKS:
        rows = [[s.patient_id, lab[task]] for s, lab in zip(subjects, labels, strict=True)]
        _write_csv(out / "labels" / f"{task}.csv", ["subject_id", "label"], rows)
        positives = sum(row[1] for row in rows)
        summary["labels"][task] = {"n": n_subjects, "positive": positives,
                                   "positive_fraction": round(positives / n_subjects, 4)}
    found = identifiers(subjects, seed)
    if unlabeled:
        pool = plan_unlabeled(unlabeled, subjects, seed, image_size, slices)
        summary["unlabeled"] = {"subjects": unlabeled, **write_unlabeled(pool, out, seed, image_size)}
        more = identifiers(pool, seed + POOL_SEED_OFFSET)
        found = {kind: sorted(set(values) | set(more[kind])) for kind, values in found.items()}
    (out / "identifiers.json").write_text(json.dumps(found, indent=1) + "\n")
    return summary


def write_demo_salt(path: Path, seed: int) -> None:
    """A pseudonym key derived from the seed, so the demo's splits and metrics are the same on every machine.

    Demo only: a real deployment's key is random and secret (pseudonym.load_or_create_salt makes one).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(hashlib.sha256(f"mmhealth-demo-key:{seed}".encode()).hexdigest() + "\n")
