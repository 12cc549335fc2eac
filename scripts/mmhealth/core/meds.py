"""MEDS 0.4: the version we write and the validation of an event table against the `meds` package's schema.

Besides the schema, `validate_meds_events` checks what it cannot see: one subject's events are contiguous
and sorted by time, static (null-time) events first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MEDS_VERSION = "0.4.1"  # the `meds` package whose schemas are used (pyproject pins the same)


class MedsValidationError(ValueError):
    """A table that is not valid MEDS data; the message says which rule it breaks."""


def meds_package() -> Any:
    try:
        import meds
    except ImportError as exc:  # pragma: no cover - the environment pins it
        raise ImportError(f"the 'meds' package ({MEDS_VERSION}) is needed to validate MEDS data") from exc
    return meds


def validate_meds_events(table: pa.Table) -> pa.Table:
    """The table aligned to MEDS `DataSchema`; MedsValidationError when it is not valid MEDS data."""
    meds = meds_package()
    aligned = table
    if "text_value" in table.column_names and table.schema.field("text_value").type == pa.string():
        # the one cast MEDS 0.4.1 needs from our schema; anything else must already be right
        index = table.column_names.index("text_value")
        aligned = table.set_column(index, "text_value", table.column(index).cast(pa.large_string()))
    try:
        meds.DataSchema.validate(aligned)
    except Exception as exc:
        raise MedsValidationError(f"not MEDS {MEDS_VERSION} data: {exc}") from None
    if table.num_rows == 0:
        return aligned
    subjects = table.column("subject_id").to_numpy()
    changes = np.flatnonzero(subjects[1:] != subjects[:-1]) + 1
    if len(np.unique(subjects[np.r_[0, changes]])) != len(changes) + 1:
        raise MedsValidationError("a subject's events are not contiguous")
    times = pc.fill_null(pc.cast(table.column("time"), pa.int64()), np.iinfo(np.int64).min).to_numpy()
    descending = np.flatnonzero((times[1:] < times[:-1]) & (subjects[1:] == subjects[:-1]))
    if len(descending):
        raise MedsValidationError(f"events of a subject are not sorted by time (row {descending[0] + 1}; "
                                  "static events must come first)")
    return aligned


