"""The task page's section on its variants and, for a fusion task, its modality ablations: the fusion verdict
lines, their rules, and one row per variant with the paired AUROC difference and its p-value."""

from __future__ import annotations

from html import escape

from mmhealth.report.html import html_table
from mmhealth.report.verdicts import (
    FUSION_RULE,
    contributions_line,
    format_p,
    gain_line,
    verdict_word,
)


def fusion_lines(metrics: dict) -> list[str]:
    """The fusion verdict lines that apply (none for a single-modality task or without ablations)."""
    return [line for line in (gain_line(metrics), contributions_line(metrics)) if line]


def _number(value, signed: bool = False) -> str:
    if not isinstance(value, int | float) or value != value:
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def variant_rows(metrics: dict) -> list[list[str]]:
    rows = []
    for name, c in sorted((metrics.get("comparisons") or {}).items()):
        if name == "baseline":
            continue
        difference = c.get("difference") or {}
        ci = difference.get("ci") or [None, None]
        auroc = c.get("auroc") or {}
        rows.append([name, c.get("kind", "declared"), "; ".join(c.get("changes") or []) or "nothing stated",
                     _number(auroc.get("other")), _number(auroc.get("model")), _number(difference.get("value"), True),
                     f"{_number(ci[0], True)}\u00a0to\u00a0{_number(ci[1], True)}",  # no line break inside a CI
                     format_p(c.get("p_value")).removeprefix("p ").removeprefix("= "),
                     verdict_word(c), str(c.get("n_subjects", "n/a"))])
    return rows


def variants_section(metrics: dict) -> str:
    """'Ablation and variants': empty string when the task has no variant."""
    rows = variant_rows(metrics)
    if not rows:
        return ""
    lines = fusion_lines(metrics)
    header = ["Variant", "Kind", "What differs from the task's model", "Variant AUROC", "Model AUROC", "ΔAUROC (model − variant)",
              "95% CI", "p (DeLong)", "Model better?", "Paired subjects"]
    parts = ["<h2 id=\"variants\">Ablation and variants</h2>"]
    if lines:
        parts += ["<ul>", *(f"<li><strong>{escape(line)}</strong></li>" for line in lines), "</ul>",
                  f"<p class=\"note\">{escape(FUSION_RULE)}</p>"]
    parts += [
        "<p class=\"note\">Each variant is trained and evaluated as a model of its own on the same split; both "
        "AUROCs and their difference are computed on the test subjects both models predicted. \"Model better?\" "
        "follows the baseline rule: yes only when the CI lies wholly above 0.</p>",
        html_table(header, rows),
    ]
    return "\n".join(parts)
