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


# ---- fusion tasks: what the automatic ablations (only_<m>, without_<m>) say ----
FUSION_RULE = ("Rules: \"gain over the best single modality\" compares the fusion model with its single-modality "
               "variant of highest test AUROC: \"yes\" only when the 95% paired-bootstrap CI of the AUROC "
               "difference (fusion minus it, same test subjects) lies wholly above 0, \"no\" when wholly below "
               "0, \"inconclusive\" otherwise. A modality contributes (\"yes\") when the CI of fusion minus the "
               "model trained without it lies wholly above 0, \"no\" when wholly below 0 (the model does better "
               "without it), \"inconclusive\" otherwise; \"each modality contributes\" is \"yes\" when every "
               "modality does, \"no\" when any one is \"no\", \"inconclusive\" otherwise. p is DeLong's "
               "two-sided test, shown for reference.")


def _variants(metrics: dict) -> dict[str, dict]:
    return {name: c for name, c in (metrics.get("comparisons") or {}).items() if name != "baseline"}


def single_modality(metrics: dict) -> dict[str, tuple[str, dict]]:
    """modality -> (variant, comparison) of the variants trained on that one modality of a fusion task."""
    modalities = metrics.get("modalities") or []
    if len(modalities) < 2:
        return {}
    return {c["modalities"][0]: (name, c) for name, c in sorted(_variants(metrics).items())
            if len(c.get("modalities") or []) == 1 and c["modalities"][0] in modalities}


def leave_one_out(metrics: dict) -> dict[str, tuple[str, dict]]:
    """modality -> (variant, comparison) of the variants trained on all the task's modalities but that one."""
    modalities = metrics.get("modalities") or []
    if len(modalities) < 2:
        return {}
    found = {}
    for name, c in sorted(_variants(metrics).items()):
        kept = c.get("modalities") or []
        left_out = [m for m in modalities if m not in kept]
        if len(left_out) == 1 and len(kept) == len(modalities) - 1 and set(kept) <= set(modalities):
            found.setdefault(left_out[0], (name, c))
    return {m: found[m] for m in modalities if m in found}  # in the task's order


def _other_auroc(comparison: dict) -> float:
    value = (comparison.get("auroc") or {}).get("other")
    return value if _finite(value) else -math.inf


def gain_line(metrics: dict) -> str | None:
    """'gain over the best single modality (only_ehr): yes (ΔAUROC ...)'; None without single-modality variants."""
    singles = single_modality(metrics)
    if not singles:
        return None
    name, comparison = max(singles.values(), key=lambda item: _other_auroc(item[1]))
    return verdict_line(comparison, f"gain over the best single modality ({name})")


def contributions_line(metrics: dict) -> str | None:
    """'each modality contributes: inconclusive (image: yes, ΔAUROC ...; dna: ...)'; None without ablations."""
    left_out = leave_one_out(metrics)
    if not left_out:
        return None
    words = {m: verdict_word(c) for m, (_, c) in left_out.items()}
    if all(w == "yes" for w in words.values()) and len(left_out) == len(metrics.get("modalities") or []):
        overall = "yes"
    elif any(w == "no" for w in words.values()):
        overall = "no"
    else:
        overall = "inconclusive"
    parts = [verdict_line(c, m) for m, (_, c) in left_out.items()]
    return f"each modality contributes: {overall} ({'; '.join(parts)})"
