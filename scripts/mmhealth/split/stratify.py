"""Label-stratified subject splits that stay put, worked out while Snakemake builds the DAG.

Method (config `split` gives the fractions): every subject named in a task's label file is assigned once,
in the order of its split hash (`unit_interval` of the pseudonym), to the split whose quota for that
subject's classes is furthest behind: the split s maximising the sum, over the subject's (task, class)
pairs, of fraction_s x subjects_of_that_class_so_far - subjects_of_that_class_in_s. Ties go to the
subject's hash split. For one task this keeps every class within one subject of its target count in every
split; with several tasks the same rule balances them jointly.

A subject keeps its split once assigned (the assignment is kept in the staging folder), so adding subjects
or correcting labels never moves one between train and test; changing the fractions starts afresh.
Subjects without any label keep the hash split (`subject_split.split_of`). Each shard's job reads only its
own shard's file, rewritten only when one of its subjects is newly assigned, so a new patient re-tokenises
one shard per modality.

Pseudonyms only: the raw ids of the label files are keyed here, at parse time, and never written.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path

from mmhealth.core.pseudonym import load_or_create_salt, shard_of, subject_pseudonym, unit_interval
from mmhealth.ingest.raw_index import write_if_changed
from mmhealth.split.assignment import read_assignment, state_text
from mmhealth.split.subject_split import SPLITS, split_of
from mmhealth.split.task_labels import LabelFileError, read_label_file

log = logging.getLogger("stratify")
Strata = dict[int, frozenset[tuple[str, str]]]  # subject -> its (task, class) pairs


def label_strata(label_files: Mapping[str, str | os.PathLike], key: bytes) -> Strata:
    """Each labelled subject's (task, class) pairs, read as the `task_labels` job reads the files.

    A file that is missing or that job would refuse, and a row without a subject id or a label, is skipped
    here: the task's `task_labels` job reports it naming the file and line.
    """
    pairs: dict[int, set[tuple[str, str]]] = defaultdict(set)
    for task, path in sorted(label_files.items()):
        try:
            frame = read_label_file(str(path))
        except (OSError, LabelFileError):
            continue
        for subject, label in zip(frame["subject_id"].str.strip(), frame["label"].str.strip(), strict=True):
            if subject and label:
                pairs[subject_pseudonym(subject, key)].add((task, label))
    return {subject: frozenset(found) for subject, found in pairs.items()}


def assign_splits(strata: Strata, fractions: Mapping[str, float],
                  assigned: Mapping[int, str] | None = None) -> dict[int, str]:
    """`assigned` (kept as it is) plus every subject of `strata` not in it, placed by the module's rule."""
    result = dict(assigned or {})
    in_split: dict[tuple[str, str], Counter] = defaultdict(Counter)
    seen: Counter = Counter()
    for subject, split in result.items():
        for pair in strata.get(subject, ()):
            in_split[pair][split] += 1
            seen[pair] += 1
    for subject in sorted(set(strata) - set(result), key=lambda s: (unit_interval(s), s)):
        pairs = strata[subject]
        seen.update(pairs)
        behind = {s: sum(fractions[s] * seen[p] - in_split[p][s] for p in pairs) for s in SPLITS}
        most = max(behind.values())
        tied = [s for s in SPLITS if behind[s] >= most - 1e-9]
        hashed = split_of(subject, fractions)
        choice = hashed if hashed in tied else tied[0]
        result[subject] = choice
        for pair in pairs:
            in_split[pair][choice] += 1
    return result


def stage_splits(label_files: Mapping[str, str | os.PathLike], fractions: Mapping[str, float], salt_file: str,
                 shards: int, staging: str | os.PathLike) -> list[str]:
    """Assign new labelled subjects, keep the rest, and write one assignment file per shard; their paths."""
    folder = Path(staging) / "splits"
    state_path = folder / "assignment.json"
    previous = read_assignment(state_path, fractions)
    if state_path.exists() and previous is None:
        log.warning("split fractions changed: labelled subjects are assigned afresh")
    strata = label_strata(label_files, load_or_create_salt(salt_file))
    assigned = assign_splits(strata, fractions, previous)
    write_if_changed(state_path, state_text(fractions, assigned))
    by_shard: list[dict[int, str]] = [{} for _ in range(shards)]
    for subject, split in assigned.items():
        by_shard[shard_of(subject, shards)][subject] = split
    paths = []
    for shard, subjects in enumerate(by_shard):
        path = folder / f"shard-{shard}.json"
        write_if_changed(path, state_text(fractions, subjects))
        paths.append(str(path))
    return paths
