"""Label-stratified splits: balance within one subject per class, stability as subjects come, staged files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mmhealth.core.pseudonym import shard_of, subject_pseudonym
from mmhealth.split import stratify
from mmhealth.split.assignment import read_assignments
from mmhealth.split.subject_split import SPLITS, split_of

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
KEY = b"k" * 64


def cohort(n: int, prevalence: float, seed: int, task: str = "t", start: int = 0) -> stratify.Strata:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < prevalence
    return {subject_pseudonym(f"P{start + i}", KEY): frozenset({(task, str(int(y)))}) for i, y in enumerate(labels)}


def off_target(strata: stratify.Strata, assigned: dict[int, str], fractions=FRACTIONS) -> float:
    """The largest |subjects of a class in a split - fraction x subjects of that class| over classes, splits."""
    worst = 0.0
    for pair in {p for pairs in strata.values() for p in pairs}:
        members = [s for s, pairs in strata.items() if pair in pairs]
        for split in SPLITS:
            held = sum(assigned[s] == split for s in members)
            worst = max(worst, abs(held - fractions[split] * len(members)))
    return worst


@pytest.mark.parametrize(("n", "prevalence", "fractions"), [
    (40, 0.5, FRACTIONS), (97, 0.13, FRACTIONS), (500, 0.3, {"train": 0.8, "val": 0.1, "test": 0.1}),
    (23, 0.2, {"train": 0.7, "val": 0.15, "test": 0.15})])
def test_every_class_is_within_one_subject_of_its_target_in_every_split(n, prevalence, fractions):
    strata = cohort(n, prevalence, seed=n)
    stratified = off_target(strata, stratify.assign_splits(strata, fractions), fractions)
    assert stratified < 1
    # The hash alone (the 27/4/9 of 40 subjects) is never closer.
    assert off_target(strata, {s: split_of(s, fractions) for s in strata}, fractions) >= stratified


def test_adding_subjects_never_moves_one_and_keeps_the_balance():
    first = cohort(120, 0.25, seed=1)
    before = stratify.assign_splits(first, FRACTIONS)
    grown = {**first, **cohort(80, 0.25, seed=2, start=1000)}
    after = stratify.assign_splits(grown, FRACTIONS, before)
    assert all(after[s] == split for s, split in before.items())
    assert off_target(grown, after) < 1
    # A corrected label moves nobody either.
    flipped = {s: frozenset({("t", "1" if ("t", "0") in pairs else "0")}) for s, pairs in list(grown.items())[:5]}
    assert stratify.assign_splits({**grown, **flipped}, FRACTIONS, after) == after


def test_several_tasks_are_balanced_jointly():
    """Two tasks with independent labels and a third on half the subjects: each class stays close."""
    a, b, c = cohort(300, 0.3, 5, "a"), cohort(300, 0.5, 6, "b"), cohort(150, 0.2, 7, "c")
    strata = {s: a[s] | b[s] | c.get(s, frozenset()) for s in a}
    assigned = stratify.assign_splits(strata, FRACTIONS)
    assert off_target(strata, assigned) <= 2.5, off_target(strata, assigned)
    hashed = {s: split_of(s, FRACTIONS) for s in strata}
    assert off_target(strata, assigned) < off_target(strata, hashed)


def write_labels(path, rows, bom=False):
    text = "subject_id,label\r\n" + "".join(f"{s},{y}\r\n" for s, y in rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())


def test_staged_files_per_shard_change_only_where_a_subject_is_new(tmp_path):
    salt = tmp_path / "salt"
    salt.write_bytes(KEY)
    labels = tmp_path / "t.csv"
    rows = [(f"MRN{i}", i % 3 == 0) for i in range(60)]
    write_labels(labels, rows, bom=True)  # spreadsheets' "CSV UTF-8": the header must still be read
    paths = stratify.stage_splits({"t": labels}, FRACTIONS, str(salt), 4, tmp_path / "staging")
    assigned = read_assignments(paths, FRACTIONS)
    assert len(assigned) == 60 and set(assigned) == {subject_pseudonym(f"MRN{i}", KEY) for i in range(60)}
    times = [os.stat(p).st_mtime_ns for p in paths]
    newcomer = subject_pseudonym("MRN-new", KEY)
    write_labels(labels, [*rows, ("MRN-new", 1), (" ", 1)])  # an empty id is left to the task_labels job
    again = stratify.stage_splits({"t": labels}, FRACTIONS, str(salt), 4, tmp_path / "staging")
    changed = [k for k, p in enumerate(again) if os.stat(p).st_mtime_ns != times[k]]
    assert changed == [shard_of(newcomer, 4)]
    grown = read_assignments(again, FRACTIONS)
    assert all(grown[s] == split for s, split in assigned.items()) and newcomer in grown
    # Other fractions: everything is assigned afresh, and the files say for which fractions they were made.
    other = {"train": 0.5, "val": 0.25, "test": 0.25}
    fresh = stratify.stage_splits({"t": labels}, other, str(salt), 4, tmp_path / "staging")
    assert len(read_assignments(fresh, other)) == 61
    with pytest.raises(ValueError, match="split fractions"):
        read_assignments(fresh, FRACTIONS)


def test_no_label_yet_is_no_change_of_fractions(tmp_path, caplog):
    (tmp_path / "salt").write_bytes(KEY)
    for _ in range(2):
        paths = stratify.stage_splits({}, FRACTIONS, str(tmp_path / "salt"), 2, tmp_path / "staging")
    assert read_assignments(paths, FRACTIONS) == {} and "fractions changed" not in caplog.text


def test_missing_or_headerless_label_files_are_left_to_their_job(tmp_path):
    (tmp_path / "bad.csv").write_text("who,what\nx,1\n")
    strata = stratify.label_strata({"a": tmp_path / "absent.csv", "b": tmp_path / "bad.csv"}, KEY)
    assert strata == {}
