"""Markdown table cells and tables for the generated blocks of README.md and docs/*.md."""

from __future__ import annotations


def pct(v, digits=2) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def table(head: list[str], rows: list[list]) -> str:
    return "\n".join([row(head), "|" + "---|" * len(head), *(row(r) for r in rows)])
