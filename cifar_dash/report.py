"""README's results table, generated from the metrics files (never typed by hand)."""

from __future__ import annotations

from pathlib import Path

from . import results


def _duration(seconds):
    if seconds is None:
        return "-"
    seconds = float(seconds)
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min"


def results_markdown(root: Path | None = None) -> str:
    lines = [
        "| stage | reported | measured (test images) | epochs | train time | train machine | backbone |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results.load_all(root):
        s = r.stage
        if r.metrics is None:
            lines.append(f"| `{s.key}` | {s.reported_accuracy:.2f}% | {r.status} | - | - | - | - |")
            continue
        m = r.metrics
        backbone = m.get("backbone") or "-"
        weights = m.get("backbone_weights") or {}
        if isinstance(weights, dict) and weights.get("file"):
            backbone += f" ({weights['file']})"
        measured = f"{100 * m['test_accuracy']:.2f}% ({m['n_test']:,})"
        if r.status == "stale":
            measured += " stale"
        lines.append(f"| `{s.key}` | {s.reported_accuracy:.2f}% | {measured} | {m.get('epochs', '-')} | "
                     f"{_duration(m.get('train_seconds'))} | {m.get('train_machine', '-')} | {backbone} |")
    return "\n".join(lines)
