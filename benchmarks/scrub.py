"""Notes scrubbing: recall and precision per PHI category on labelled synthetic notes, notes/s, ingest cost.

1. Quality: `mmhealth.demo.phi_notes.labelled_notes` (default 1,000 notes) are scrubbed as the EHR stage
   does it (`ehr_scrub.scrubbed`: the patient's own identifier columns, then `ehr_phi` patterns). A planted
   item counts as found when none of its alphanumeric tokens survives (token alignment of input and output
   with difflib); per category: recall (items), token precision (PHI tokens among all removed tokens), and
   over all notes the share of clinical tokens lost. The same for `identifiers` only (the old scrubber), and
   for any library found under `--library-path` (scrubadub, philter-lite; install them there with
   `pip install --target DIR scrubadub philter-lite`; they are not project dependencies).
2. Speed: notes/s on one core of each scrubber, best of 3.
3. Cost in the EHR stage: the whole `ingest_ehr` on a generated demo export (default 200 subjects), with
   `privacy.scrub_notes: patterns` against `identifiers`, interleaved, best of 3 each: the ratio.
Written to benchmarks/results/scrub.json.

    .venv/bin/python benchmarks/scrub.py [--notes 1000] [--subjects 200] [--library-path DIR]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from mmhealth.demo.data import generate_demo  # noqa: E402
from mmhealth.demo.phi_notes import LabelledNote, labelled_notes, score  # noqa: E402
from mmhealth.ingest import common  # noqa: E402
from mmhealth.ingest.ehr import ingest_ehr  # noqa: E402
from mmhealth.ingest.ehr_scrub import identifier_terms, scrubbed  # noqa: E402


def timed(fn: Callable[[], object], rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def ours(notes: list[LabelledNote], use_patterns: bool) -> Callable[[], list[str]]:
    redact = {n.patient_id: set().union(*(identifier_terms(v) for v in n.identifiers)) for n in notes}

    def run() -> list[str]:
        patterns: dict = {}
        return [scrubbed(n.text, n.patient_id, redact, patterns, use_patterns) for n in notes]

    return run


def libraries(notes: list[LabelledNote], path: str | None) -> dict[str, Callable[[], list[str]] | str]:
    """Library scrubbers found under `path`: a runner each, or why it cannot run here."""
    if not path:
        return {}
    sys.path.insert(0, path)
    found: dict[str, Callable[[], list[str]] | str] = {}
    try:
        import scrubadub

        scrubber = scrubadub.Scrubber()
        found["scrubadub"] = lambda: [scrubber.clean(n.text) for n in notes]
    except Exception as exc:  # reported, not hidden: the point is what installs and runs offline
        found["scrubadub"] = f"{type(exc).__name__}: {exc}"
    try:
        import philter_lite

        config = Path(philter_lite.__file__).parent / "configs" / "philter_delta.toml"
        filters = philter_lite.load_filters(str(config))

        def philter() -> list[str]:
            out = []
            for n in notes:
                include, _, _ = philter_lite.detect_phi(n.text, filters)
                out.append(philter_lite.transform_text_asterisk(n.text, include))
            return out

        philter_lite.detect_phi(notes[0].text, filters)  # fails here if NLTK data is missing
        found["philter-lite"] = philter
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip().strip("*")]
        found["philter-lite"] = f"{type(exc).__name__}: {lines[0] if lines else ''}"  # NLTK: which resource
    return found


def ingest_ratio(subjects: int, rounds: int) -> dict:
    """The whole EHR stage on a demo export: patterns + identifiers against identifiers only."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        generate_demo(raw, subjects, 0, 16, (1, 1))
        tables = [{**t, "path": str(raw / "ehr" / Path(t["path"]).name)} for t in config["inputs"]["ehr"]]
        times = {"identifiers": float("inf"), "patterns": float("inf")}
        for _ in range(rounds):
            for mode in times:
                privacy = common.privacy_params(json.dumps({"scrub_notes": mode}))
                times[mode] = min(times[mode], timed(lambda p=privacy, m=mode: ingest_ehr(
                    tables, b"k" * 32, Path(tmp) / m, 1, p), 1))
        notes = len((raw / "ehr" / "notes.csv").read_text().splitlines()) - 1
    return {"subjects": subjects, "notes": notes, "seconds": {k: round(v, 3) for k, v in times.items()},
            "ratio_patterns_vs_identifiers": round(times["patterns"] / times["identifiers"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=1000)
    parser.add_argument("--subjects", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--library-path", default=None, help="folder with scrubadub / philter-lite installed")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scrub.json")
    args = parser.parse_args()
    notes = labelled_notes(args.notes, args.seed)
    runners: dict[str, Callable[[], list[str]] | str] = {
        "ours: identifiers + patterns": ours(notes, True), "ours: identifiers only": ours(notes, False),
        **libraries(notes, args.library_path)}
    results: dict = {"machine": platform.platform(), "notes": len(notes), "scrubbers": {}}
    for name, runner in runners.items():
        if isinstance(runner, str):
            results["scrubbers"][name] = {"error": runner}
            print(f"{name}: cannot run: {runner}")
            continue
        outputs = runner()
        seconds = timed(runner)
        entry = {"notes_per_s": round(len(notes) / seconds, 1), **score(notes, outputs)}
        results["scrubbers"][name] = entry
        print(f"{name}: {entry['notes_per_s']} notes/s, clinical tokens lost {entry['clinical_tokens_lost']}")
        for category, values in entry.items():
            if isinstance(values, dict):
                print(f"  {category:8s} {values}")
    results["ingest_ehr"] = ingest_ratio(args.subjects, 3)
    print("ingest_ehr:", results["ingest_ehr"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
