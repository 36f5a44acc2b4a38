"""Text for people: durations and counts with their units (pages and figures), and the Markdown table cells and
tables of the generated blocks of README.md and docs/*.md."""

from __future__ import annotations


def pct(v, digits=2) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def table(head: list[str], rows: list[list]) -> str:
    return "\n".join([row(head), "|" + "---|" * len(head), *(row(r) for r in rows)])


def seconds(s, like=None) -> str:
    """Seconds in s, min or h by size; ``like``: the value whose unit to use, so figures side by side compare."""
    if s is None:
        return "-"
    ref = s if like is None else like
    return f"{s / 3600:.1f} h" if ref >= 5400 else (f"{s / 60:.1f} min" if ref >= 90 else f"{s:.0f} s")


def seconds_pair(a, b) -> str:
    """ "A / B" in one unit (the larger one's): never "63 s / 1.6 min"."""
    known = [v for v in (a, b) if v is not None]
    like = max(known) if known else None
    return f"{seconds(a, like)} / {seconds(b, like)}"


def plural(n, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
