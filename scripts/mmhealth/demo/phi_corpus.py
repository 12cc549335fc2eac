"""Plant identifiers where real hospital exports hide them, in a generated demo export (for privacy tests).

`plant_phi(raw)` rewrites a `generate_demo` export in place and returns every planted string that must never
reach results/ or the logs:
- DICOM: each export folder renamed after the patient ('DOE_JANE_MRN...'), each file renamed likewise, and
  in every file OtherPatientIDs, AccessionNumber, ImageComments, InstitutionName, ReferringPhysicianName,
  PatientTelephoneNumbers, PatientAddress, StudyDescription, OperatorsName, a private tag and a sequence
  (RequestAttributesSequence with a requesting physician and an id); one extra file without pixel data in
  the same folder, so a quarantine row names a PHI-laden path.
- FASTA: each file renamed after its first patient; record descriptions with a name, phone and birth date;
  one extra record whose header matches no subject (quarantined).
- EHR: patients.csv gains columns no table declares (`email`, `phone`, `next_of_kin`); notes gain sentences
  with relatives, staff, phones in several formats, e-mails, an address, ids, URLs and dates.
It writes `phi_audit/planted.json` (the planted strings: search your results/ for them) and
`phi_audit/labelled_notes.jsonl` (labelled notes to measure a scrubber on, see `phi_notes`) under `raw`.
CLI: `make_demo_data.py --plant-phi`.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mmhealth.demo.phi_notes import labelled_notes

STAFF = ("Okonkwo", "Lindqvist", "Abernethy-Cole")
RELATIVES = (("daughter", "Rosalind"), ("son", "Ignatius"), ("wife", "Marguerite"), ("husband", "Bartholomew"))


def _person(index: int) -> dict[str, str]:
    """Distinct planted identifiers of the index-th planted patient."""
    relation, relative = RELATIVES[index % len(RELATIVES)]
    letters = "".join(chr(97 + index // 26 ** k % 26) for k in (2, 1, 0))  # names have no digits
    return {"name": f"Quillon{letters}", "given": "Perpetua", "mrn": f"ZX{index:05d}Q7",
            "phone": f"(617) 555-{index:04d}", "phone2": f"+44 20 7946 {index:04d}",
            "email": f"perpetua.quillon{index:03d}@mailbox.example", "address": f"{index + 10} Wisteria Lane",
            "relative": relative, "relation": relation, "staff": STAFF[index % len(STAFF)],
            "accession": f"ACC{index:06d}XR", "url": f"https://mychart.example.org/u/{index:05d}q"}


def _plant_dicom(raw: Path) -> list[str]:
    needles: list[str] = []
    exports = sorted(p for p in (raw / "dicom").iterdir() if p.is_dir())
    for index, export in enumerate(exports):
        who = _person(index)
        folder_name = f"{who['name'].upper()}_{who['given'].upper()}_{who['mrn']}"
        needles += [folder_name, who["name"], who["given"], who["mrn"], who["phone"], who["accession"], who["staff"]]
        files = sorted(p for p in export.rglob("*") if p.is_file())
        for number, path in enumerate(files):
            ds = pydicom.dcmread(path)
            ds.OtherPatientIDs = who["mrn"]
            ds.AccessionNumber = who["accession"]
            ds.ImageComments = f"Patient {who['given']} {who['name']} called from {who['phone']}"
            ds.InstitutionName = f"{who['staff']} Memorial Clinic"
            ds.ReferringPhysicianName = f"{who['staff']}^Alphonse"
            ds.PatientTelephoneNumbers = [who["phone"]]
            ds.PatientAddress = who["address"]
            ds.StudyDescription = f"CT chest for {who['name']}"
            ds.OperatorsName = f"{who['staff']}^Tech"
            block = ds.private_block(0x0011, "MMHEALTH PHI TEST", create=True)
            block.add_new(0x01, "LO", f"{who['name']} {who['mrn']}")
            request = Dataset()
            request.RequestingPhysician = f"{who['staff']}^Referrer"
            request.RequestedProcedureID = f"RP{who['mrn']}"
            ds.RequestAttributesSequence = Sequence([request])
            needles.append(f"RP{who['mrn']}")
            target = path.with_name(f"{who['name']}_{who['given']}_{number:03d}{path.suffix}")
            ds.save_as(target, enforce_file_format=True)
            path.unlink()
        broken = Dataset()  # a header without pixel data: refused, so its (renamed) path reaches quarantine
        broken.PatientID, broken.PatientName = ds.PatientID, f"{who['name']}^{who['given']}"
        broken.Modality, broken.SOPClassUID = "CT", ds.SOPClassUID
        broken.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.998.{index}"
        broken.SOPInstanceUID = f"1.2.826.0.1.3680043.10.998.{index}.1"
        broken.file_meta = pydicom.dataset.FileMetaDataset()
        broken.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        broken.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        broken.file_meta.MediaStorageSOPInstanceUID = broken.SOPInstanceUID
        broken.save_as(files[0].parent / f"{who['name']}_NOPIXELS.dcm", enforce_file_format=True)
        export.rename(export.with_name(folder_name))
    return needles


def _plant_fasta(raw: Path) -> list[str]:
    needles: list[str] = []
    for index, path in enumerate(sorted((raw / "fasta").iterdir())):
        who = _person(100 + index)
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as handle:
            lines = handle.read().splitlines()
        planted = [f"{line} patient {who['given']} {who['name']} tel {who['phone']} dob 1931-02-0{index % 9 + 1}"
                   if line.startswith(">") else line for line in lines]
        planted += [f">|{who['mrn']} unmatched header of {who['name']}", "ACGTACGTACGT"]
        target = path.with_name(f"{who['name']}_{who['mrn']}_{path.name}")
        with opener(target, "wt") as handle:
            handle.write("\n".join(planted) + "\n")
        path.unlink()
        needles += [who["name"], who["mrn"], who["phone"], f"1931-02-0{index % 9 + 1}"]
    return needles


def _plant_ehr(raw: Path) -> list[str]:
    needles: list[str] = []
    patients = raw / "ehr" / "patients.csv"
    with patients.open(newline="") as handle:
        rows = list(csv.reader(handle))
    rows[0] += ["email", "phone", "next_of_kin"]
    for index, row in enumerate(rows[1:]):
        who = _person(200 + index)
        row += [who["email"], who["phone"], f"{who['relative']} {who['name']}"]
        needles += [who["email"], who["phone"], who["name"]]
    with patients.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    notes = raw / "ehr" / "notes.csv"
    with notes.open(newline="") as handle:
        rows = list(csv.reader(handle))
    for index, row in enumerate(rows[1:]):
        who = _person(500 + index)
        row[2] += (f" Her {who['relation']} {who['relative']} {who['name']} ({who['phone']}) was present;"
                   f" {who['relative']} will call back. Alternate MRN: {who['mrn']}. E-mail {who['email']},"
                   f" fax {who['phone2']}. Lives at {who['address']}, Apt 2. Portal {who['url']}."
                   f" Seen with Dr. {who['staff']}. Next visit 03/0{index % 9 + 1}/2031.")
        needles += [who["name"], who["mrn"], who["phone"], who["phone2"], who["email"], who["address"],
                    who["url"], f"03/0{index % 9 + 1}/2031", f"{who['relative']} will call"]
    with notes.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    needles += [staff for staff in STAFF]
    return needles


def plant_phi(raw: str | Path) -> list[str]:
    """Plant identifiers in the export under `raw` (see the module docstring); return them, deduplicated."""
    raw = Path(raw)
    needles = sorted(set(_plant_dicom(raw) + _plant_fasta(raw) + _plant_ehr(raw)))
    (raw / "phi_audit").mkdir(exist_ok=True)
    (raw / "phi_audit" / "planted.json").write_text(json.dumps(needles, indent=0) + "\n")
    with (raw / "phi_audit" / "labelled_notes.jsonl").open("w") as handle:
        for note in labelled_notes(1000, seed=0):
            handle.write(json.dumps({"patient_id": note.patient_id, "identifiers": note.identifiers,
                                     "segments": note.segments}) + "\n")
    return needles
