"""Words from numbers: the verdict lines the pages print, each from a rule stated beside it."""

from __future__ import annotations

import math
from typing import Any

BASELINE_RULE = ("Rule: \"yes\" only when the 95% paired-bootstrap CI of the AUROC difference (model minus "
                 "baseline, same test subjects) lies wholly above 0; \"no\" when it lies wholly below 0; "
                 "\"inconclusive\" otherwise. p is DeLong's two-sided test of equal AUROC, shown for reference; "
                 "the verdict follows the CI.")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def verdict_word(comparison: dict | None) -> str:
    """'yes', 'no' or 'inconclusive' by BASELINE_RULE; 'not computed' without a usable CI."""
    ci = ((comparison or {}).get("difference") or {}).get("ci") or []
    if len(ci) != 2 or not all(_finite(v) for v in ci):
        return "not computed"
    if ci[0] > 0:
        return "yes"
    if ci[1] < 0:
        return "no"
    return "inconclusive"


def format_p(p: Any) -> str:
    if not _finite(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def verdict_line(comparison: dict | None, question: str = "beats the baseline") -> str:
    """'beats the baseline: yes (ΔAUROC +0.031, 95% CI +0.004 to +0.060, p = 0.021)'."""
    word = verdict_word(comparison)
    if word == "not computed":
        return f"{question}: not computed (no AUROC difference with a CI)"
    difference = comparison["difference"]
    lo, hi = difference["ci"]
    return (f"{question}: {word} (ΔAUROC {difference['value']:+.3f}, 95% CI {lo:+.3f} to {hi:+.3f}, "
            f"{format_p(comparison.get('p_value'))})")
