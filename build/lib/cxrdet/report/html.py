"""The HTML pieces every report page shares: the page head (offline: no external style or script), tables, figure
tags and number formatting."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable

import pandas as pd


def page_head(title: str, heading: str) -> str:
    """The start of a report page, up to its first heading: offline, no external style or script."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cxrdet report: {html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1250px;margin:auto;padding:1em}} img{{max-width:100%;height:auto}}
table.t{{border-collapse:collapse;font-size:0.9em}}
table.t td,table.t th{{padding:2px 8px;border-bottom:1px solid #ddd}}
figcaption{{color:#555;font-size:0.9em}}</style></head><body>
<h1>{html.escape(heading)}</h1>"""


def number(value: float | None) -> str:
    """A score with 4 decimals; '-' for None or NaN."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def table_html(frame: pd.DataFrame) -> str:
    """A table of numbers with 4 decimals, '-' for missing values."""
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-", border=0, classes="t")


def json_number(value: float | None) -> float | None:
    """A float for JSON; None for None or NaN (JSON has no NaN)."""
    return None if value is None or math.isnan(value) else float(value)


def figure_html(name: str, caption: str, size: tuple[int, int]) -> str:
    """An `<img>` of `<name>.png` with its pixel size and caption."""
    w, h = size
    return (f'<figure><img src="{name}.png" width="{w}" height="{h}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def items_html(lines: Iterable[str]) -> str:
    """`<li>` items of plain-text lines (escaped)."""
    return "".join(f"<li>{html.escape(n)}</li>" for n in lines)
