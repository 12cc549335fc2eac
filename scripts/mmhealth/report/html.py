"""The building blocks every mmhealth page shares: a self-contained HTML page, tables, inline PNG figures
and estimates with their confidence intervals."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from html import escape
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; set before any figure exists
from matplotlib.figure import Figure

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f2f2f2; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; }
.note { color: #666; font-size: 0.9em; }
"""


def html_page(title: str, body: Sequence[str]) -> str:
    """A complete HTML document; `title` is escaped here, `body` parts must already be safe HTML."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> str:
    """A table with every header and cell escaped."""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>\n" for row in rows)
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table>"


def figure_html(fig: Figure, alt: str) -> str:
    """The figure as an inline base64 PNG <img>."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def format_estimate(entry: dict | None, digits: int = 3) -> str:
    """'0.912 (0.861-0.953)' from {"value", "ci"}; 'n/a' where undefined (None or NaN)."""
    if not entry or not _finite(entry.get("value")):
        return "n/a"
    text = f"{entry['value']:.{digits}f}"
    ci = entry.get("ci") or []
    if len(ci) == 2 and all(_finite(v) for v in ci):
        # "to" where a bound is negative: "-0.21–0.40" reads as a range of negatives
        joiner = " to " if ci[0] < 0 or ci[1] < 0 else "–"
        text += f" ({ci[0]:.{digits}f}{joiner}{ci[1]:.{digits}f})"
    return text
