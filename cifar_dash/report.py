"""README's results table, generated from the metrics files (never typed by hand)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from . import results, stages


def _duration(seconds):
    if seconds is None:
        return "-"
    seconds = float(seconds)
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min"


def deviations(r) -> list[str]:
    """How a shipped run differs from the stage's default recipe, read from its metrics (never typed)."""
    m, default = r.metrics, r.stage.recipe
    notes = []
    if m.get("epochs") != default.epochs:
        notes.append(f"{m.get('epochs')} of the recipe's {default.epochs} epochs")
    if m.get("limit"):
        notes.append(f"smoke run on {m['limit']:,} images")
    if default.backbone and m.get("backbone") != default.backbone:
        notes.append(f"{m.get('backbone')} backbone instead of {default.backbone}")
    spans = lineage(r.train_info or {}, m.get("epochs"))
    if not default.mixed_precision:
        bf16 = []  # (first, last) epochs computed in bfloat16, adjacent spans joined
        for s in spans:
            if s["mixed_precision"]:
                if bf16 and bf16[-1][1] == s["first"] - 1:
                    bf16[-1] = (bf16[-1][0], s["last"])
                else:
                    bf16.append((s["first"], s["last"]))
        if bf16 and all(s["mixed_precision"] for s in spans):
            notes.append("bfloat16 compute")
        elif bf16:
            notes.append("bfloat16 compute in " + ", ".join(_epochs(*b) for b in bf16))
    for before, span in zip(spans, spans[1:]):
        measured = f" that measured {before['test_accuracy']:.2%}" if before["test_accuracy"] is not None else ""
        notes.append(
            f"{_epochs(span['first'], span['last'])} continued from a {before['last']}-epoch run{measured} "
            "(optimizer restarted)"
        )
    final_machine = spans[-1]["machine"] if spans else None
    for span in spans[:-1]:
        if span["machine"] and span["machine"] != final_machine:
            notes.append(f"{_epochs(span['first'], span['last'])} trained on {span['machine']}")
    changed = recipe_changes(m.get("recipe"), default)
    if changed:
        notes.append("an earlier recipe (differs in " + ", ".join(changed) + ")")
    if r.status == "stale":
        notes.append("model retrained since this evaluation")
    return notes


def lineage(info: dict, epochs) -> list[dict]:
    """The spans of epochs a shipped run was trained in, oldest first: one per run when it was continued from a
    published run (``--continue-from``, possibly several times), each with its precision, machine and, for all but
    the last, the test accuracy that run measured. Read from train_info's nested ``continued_from``."""
    spans, run, last = [], info, epochs
    while run is not None:
        prior = run.get("continued_from") or None
        first = prior["epochs"] + 1 if prior else 1
        spans.append(
            {
                "first": first,
                "last": last,
                "mixed_precision": bool(run.get("mixed_precision")),
                "machine": (run.get("train_runtime") or {}).get("machine"),
                "test_accuracy": run.get("test_accuracy") if run is not info else None,
            }
        )
        run, last = prior, first - 1
    return spans[::-1]


def _epochs(first, last) -> str:
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


# Settings a checkpoint may differ in without being another recipe (reported separately or per run).
_PER_RUN = {"seed", "phases", "mixed_precision", "backbone"}


def recipe_differences(a: dict, b: dict, ignore=frozenset()) -> list[str]:
    """The fields in which two stored recipes differ (a field missing from one counts as its default), in the order
    ``Recipe`` declares them, then any unknown ones."""
    a, b = stages.stored_recipe(a), stages.stored_recipe(b)
    order = [f.name for f in dataclasses.fields(stages.Recipe)]
    keys = order + sorted((a.keys() | b.keys()) - set(order))
    return [k for k in keys if k not in ignore and a.get(k) != b.get(k)]


def recipe_changes(stored: dict | None, default) -> list[str]:
    """The recipe fields in which a checkpoint's stored recipe differs from the stage's current one."""
    if not stored:
        return []
    return recipe_differences(stored, json.loads(json.dumps(default.to_dict())), ignore=_PER_RUN)


def _runs_note(r) -> str | None:
    from . import artifacts

    try:
        summary = artifacts.read_json(r.folder / artifacts.SEEDS)
    except artifacts.ArtifactError:
        return None
    sd = summary.get("std_test_accuracy")
    secs = summary.get("mean_train_seconds")
    return (
        f"{summary['n_runs']} seeds: mean {100 * summary['mean_test_accuracy']:.2f}%"
        + (f" ± {100 * sd:.2f} (sd)" if sd is not None else "")
        + (f", mean train time {_duration(secs)}" if secs is not None else "")
    )


def results_markdown(root: Path | None = None) -> str:
    return results_markdown_for(results.load_all(root))


def results_markdown_for(res) -> str:
    """Every stage: reported, measured, cost, machine, backbone and how the shipped run differs from its recipe."""
    lines = [
        "| stage | reported | measured (test images) | vs reported | epochs | train time | train machine | backbone "
        "| differs from the default recipe |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res:
        s = r.stage
        if r.metrics is None:
            lines.append(f"| `{s.key}` | {s.reported_accuracy:.2f}% | {r.status} | - | - | - | - | - | - |")
            continue
        m = r.metrics
        backbone = m.get("backbone") or "-"
        weights = m.get("backbone_weights") or {}
        if isinstance(weights, dict) and weights.get("file"):
            backbone += f" ({weights['file']})"
        measured = f"{100 * m['test_accuracy']:.2f}% ({m['n_test']:,})"
        if r.status == "stale":
            measured += " stale"
        runs = _runs_note(r)
        if runs:
            measured += f"; {runs}"
        delta = 100 * m["test_accuracy"] - s.reported_accuracy
        lines.append(
            f"| `{s.key}` | {s.reported_accuracy:.2f}% | {measured} | {delta:+.2f} | {m.get('epochs', '-')} | "
            f"{_duration(m.get('train_seconds'))} | {m.get('train_machine', '-')} | {backbone} | "
            f"{'; '.join(deviations(r)) or '-'} |"
        )
    return "\n".join(lines)


def ablation_table(doc: dict) -> tuple[str, list[dict]]:
    """What each trick is worth, from an ablations.json (``benchmarks/ablate_speedrun.py``): a line saying how the runs
    were made (images, epochs, seeds, machine) and one row per variant, the full recipe first, with test accuracy
    (all test-time views and one view) and its difference from the full recipe in points."""
    try:
        return _ablation_table(doc)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        from .artifacts import ArtifactError

        raise ArtifactError(f"ablations.json is not in the expected form ({type(e).__name__}: {e})") from e


def _ablation_table(doc: dict) -> tuple[str, list[dict]]:
    rows = doc.get("rows") or []
    summary = doc.get("summary") or []
    if not rows or not summary:
        return "", []
    full = next((s for s in summary if s["variant"] == "full"), None)
    table = []
    for s in sorted(summary, key=lambda s: s["variant"] != "full"):
        one = s.get("mean_one_view")
        table.append(
            {
                "variant": s["variant"],
                "what it removes": s["removes"],
                "runs": s["runs"],
                "test accuracy %": round(100 * s["mean_accuracy"], 2),
                "vs full (points)": round(100 * (s["mean_accuracy"] - full["mean_accuracy"]), 2) if full else None,
                "one view %": round(100 * one, 2) if one is not None else None,
                "one view vs full (points)": round(100 * (one - full["mean_one_view"]), 2)
                if full and one is not None and full.get("mean_one_view") is not None
                else None,
                "train min": round(s["mean_train_seconds"] / 60, 1),
            }
        )
    seeds = sorted({r["seed"] for r in rows})
    n_train = sorted({r["n_train"] for r in rows})
    epochs = sorted({r["epochs"] for r in rows})
    machines = sorted({str(r.get("train_machine")) for r in rows})
    protocol = (
        f"{len(rows)} runs, each on {' / '.join(f'{n:,}' for n in n_train)} training images for "
        f"{' / '.join(map(str, epochs))} epochs, tested on {rows[0]['n_test']:,} test images; seeds "
        f"{', '.join(map(str, seeds))}; trained on {', '.join(machines)}"
    )
    budget = doc.get("protocol") or {}
    if budget.get("limit") or budget.get("epochs"):
        protocol += (
            ". A smaller budget than the recipe's, so every figure is lower than the checkpoint's: compare "
            "the rows with each other"
        )
    if max(s["runs"] for s in summary) == 1:
        protocol += ". One run per variant: differences of a few tenths of a point are within run-to-run noise"
    return protocol, table


def seeds_summary(stage: str, folders: list[Path]) -> dict:
    """Run-to-run spread of one recipe trained with different seeds: each folder holds a metrics.json."""
    import statistics

    from . import artifacts

    runs, recipes = [], []
    for f in folders:
        m = artifacts.read_json(Path(f) / artifacts.METRICS)
        if (Path(f) / artifacts.TRAIN_INFO).exists():  # the training facts live there (results.joined)
            from .results import joined

            m = joined(m, artifacts.read_json(Path(f) / artifacts.TRAIN_INFO))
        if m.get("stage") != stage:
            raise artifacts.ArtifactError(f"{f}: metrics are for {m.get('stage')!r}, not {stage!r}")
        recipe = dict(m.get("recipe") or {})
        runs.append(
            {
                "seed": recipe.pop("seed", None),
                "test_accuracy": m["test_accuracy"],
                "one_view_accuracy": (m.get("tta_accuracy") or {}).get("none"),
                "n_test": m["n_test"],
                "train_seconds": m.get("train_seconds"),
                "epochs": m.get("epochs"),
                "machine": m.get("train_machine"),
                "run_id": m.get("run_id"),
            }
        )
        recipes.append((f, recipe))
    if len({r["seed"] for r in runs}) != len(runs):
        raise ValueError("two runs share a seed")
    for f, recipe in recipes[1:]:
        differ = recipe_differences(recipe, recipes[0][1])
        if differ:
            raise ValueError(
                f"{f} used another recipe than {recipes[0][0]} (differs in {', '.join(differ)}); "
                "only seeds of one recipe are pooled"
            )
    acc = [r["test_accuracy"] for r in runs]
    secs = [r["train_seconds"] for r in runs if r["train_seconds"] is not None]
    one = [r["one_view_accuracy"] for r in runs if r["one_view_accuracy"] is not None]
    return {
        "stage": stage,
        "n_runs": len(runs),
        "runs": runs,
        "mean_test_accuracy": statistics.fmean(acc),
        "std_test_accuracy": statistics.stdev(acc) if len(acc) > 1 else None,
        "mean_train_seconds": statistics.fmean(secs) if secs else None,
        "mean_one_view_accuracy": statistics.fmean(one) if len(one) == len(runs) and one else None,
    }


def stages_text(res) -> str:
    """`python -m cifar_dash stages`: one line per stage, reported against measured, and its status."""
    rows = [("key", "title", "reported", "measured", "status")]
    for r in res:
        measured = f"{100 * r.accuracy:.2f}%" if r.accuracy is not None else "-"
        status = r.status + (f" ({r.error})" if r.error else "")
        rows.append((r.stage.key, r.stage.title, f"{r.stage.reported_accuracy:.2f}%", measured, status))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[4] for row in rows)
