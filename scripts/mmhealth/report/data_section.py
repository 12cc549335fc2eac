"""The "Data" section of the pages: what was ingested and refused, subjects per split, and per task the
units, prevalence and unused labels per split, from results/accounting.json (counts only, no raw id)."""

from __future__ import annotations

from html import escape

from mmhealth.report.html import html_table


def modality_rows(accounting: dict) -> list[list[str]]:
    rows = []
    for modality, entry in accounting.get("modalities", {}).items():
        reasons = "; ".join(f"{r['count']} × {r['reason']}" for r in entry["top_reasons"]) or "none"
        rows.append([modality, str(entry["records_in"]), str(entry["records_out"]),
                     f"{entry['records_quarantined']} ({100 * entry['quarantined_fraction']:.1f}%)", reasons])
    return rows


def task_rows(accounting: dict, tasks: list[str]) -> list[list[str]]:
    rows = []
    for task in tasks:
        entry = accounting.get("tasks", {}).get(task)
        if entry is None:
            continue
        for split, counts in entry["splits"].items():
            classes = counts["classes"]
            prevalence = ", ".join(f"{c}: {n} ({n / counts['units']:.0%})" for c, n in classes.items()) \
                if counts["units"] else "none"
            rows.append([task, split, str(counts["units"]), prevalence])
    return rows


def data_section(accounting: dict | None, tasks: list[str]) -> str:
    """The section for the summary page (every task) or one task's page (`tasks` = [that task])."""
    head = '<h2 id="data">Data</h2>\n'
    if not accounting:
        return head + '<p class="note">No data accounting was given.</p>'
    subjects = accounting.get("subjects", {})
    parts = [head, "<p>Records in = records out + records quarantined; every refused record is listed with its "
                   "reason in <code>ingest/&lt;modality&gt;/quarantine.parquet</code>.</p>",
             html_table(["Modality", "Records in", "Records out", "Quarantined", "Top reasons"],
                        modality_rows(accounting))]
    if subjects:
        parts.append(f"<p>Subjects per split: {escape(', '.join(f'{s} {n}' for s, n in subjects.items()))}.</p>")
    parts.append(html_table(["Task", "Split", "Label units", "Classes (prevalence)"], task_rows(accounting, tasks)))
    unused = [(t, accounting["tasks"][t]) for t in tasks if t in accounting.get("tasks", {})]
    notes = [f"{escape(t)}: {e['labels_unused']} of {e['labels_in']} labels name a subject with no data "
             "(listed by raw id on the console at the end of the run)" for t, e in unused if e.get("labels_unused")]
    if notes:
        parts.append('<p class="note">' + "<br>".join(notes) + "</p>")
    return "\n".join(parts)
