"""Continuing a finished run: what a continuation may start from (same recipe, data and limit; only more epochs),
the record it keeps of the run it continued, and what stops the sidebar's "Continue the published run"."""

from __future__ import annotations

import json
from collections.abc import Sequence

from . import artifacts, plateau, stages


class ContinueError(ValueError):
    """A published checkpoint that cannot be continued with the requested recipe."""


def _comparable(*recipes: dict) -> list[dict]:
    """Stored recipes without what a continuation may change: epochs, the compute precision and XLA."""
    speed = ("mixed_precision", "jit_compile")
    out = [{k: v for k, v in stages.stored_recipe(json.loads(json.dumps(r))).items() if k not in speed} for r in recipes]
    for r in out:
        r["phases"] = [{k: v for k, v in p.items() if k != "epochs"} for p in r["phases"]]
    return out


def prior_of(finished, stage_key: str, recipe: stages.Recipe, limit) -> dict:
    """Check that the finished run (runs.FinishedRun: its folder and files) is ``recipe`` cut short (same stage,
    limit, settings; fewer epochs in its last phase, every earlier phase complete) and return what a continuation
    needs from it: its weights' folder, epochs, history and the rate it goes on at, the fingerprint of the data it was
    trained on (runplan.prepare compares it with the data loaded) and the ``record`` the continuing run's train_info
    keeps."""
    folder, info, history, test_accuracy = finished
    if not (folder / artifacts.MODEL).exists():
        raise ContinueError(f"{folder / artifacts.MODEL} is missing: nothing to continue")
    if info.get("stage") != stage_key:
        raise ContinueError(f"{folder} holds stage {info.get('stage')!r}, not {stage_key!r}")
    if info.get("limit") != limit:
        raise ContinueError(f"{folder} was trained with limit {info.get('limit')}, not {limit}")
    stored = info.get("recipe") or {}
    a, b = _comparable(stored, recipe.to_dict())
    if a != b:
        changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        raise ContinueError(
            f"{folder} was trained with other settings ({', '.join(changed) or 'phases'}); "
            "a continuation may only add epochs"
        )
    if not recipe.extendable:
        raise ContinueError(
            "this recipe's schedule spans the whole run (one-cycle rate or Lookahead), so it cannot "
            "be extended; train afresh with --epochs"
        )
    done = [p["epochs"] for p in stored["phases"]]
    problem = extension_problem(done, [p.epochs for p in recipe.phases])
    if problem:
        raise ContinueError(f"{folder}: {problem}" + (" (--epochs takes one count per phase)" if len(done) > 1 else ""))
    if len(history) != sum(done):
        raise ContinueError(f"{folder}: history has {len(history)} epochs, train_info {sum(done)}")
    # what the continuing run's train_info keeps of this run (``continued_from``), with the run this one continued
    # (nested, oldest innermost), so every epoch keeps where and in which precision it was trained
    record = {
        "run_id": info.get("run_id"),
        "epochs": sum(done),
        "train_seconds": float(info.get("train_seconds") or 0.0),
        "mixed_precision": bool(info.get("mixed_precision")),
        "train_runtime": info.get("train_runtime"),
        "test_accuracy": test_accuracy,
    }
    if info.get("continued_from"):
        record["continued_from"] = info["continued_from"]
    return {
        "learning_rate": plateau.continued_rate(recipe, history, sum(done)),
        "folder": str(folder),
        "epochs": sum(done),
        "history": history,
        "started": info.get("started"),
        "backbone_weights": info.get("backbone_weights"),
        "train_data_fingerprint": info.get("train_data_fingerprint"),
        "record": record,
    }


def extension_problem(done: Sequence[int], wanted: Sequence[int]) -> str | None:
    """Why a run with ``done`` epochs per phase cannot be continued to ``wanted`` epochs per phase (None: it can).
    A continuation adds epochs to the last phase only; every earlier phase must already be complete."""
    done, wanted = list(done), list(wanted)
    if len(done) == len(wanted) and done[:-1] == wanted[:-1] and wanted[-1] > done[-1]:
        return None
    if len(done) == 1:
        return f"the published run has {done[0]} epochs; a continuation needs more than {done[0]}, not {sum(wanted)}"
    per_phase = ",".join(map(str, done))
    return (
        f"the published run has {per_phase} epochs per phase; a continuation adds epochs to the last phase only, "
        f"not {','.join(map(str, wanted))} (e.g. {','.join(map(str, done[:-1]))},{done[-1] + 1})"
    )


# ---- what the sidebar offers --------------------------------------------------------------------------------------------


def continuation_problems(published_metrics: dict, stage: stages.Stage, epochs, limit) -> list[str]:
    """Why a continuation of the published run (its ``metrics.json``) with ``epochs`` and ``limit`` would be refused,
    in words for the sidebar; empty when it can go ahead (prior_of checks the rest when it starts)."""
    done = [p["epochs"] for p in (published_metrics.get("recipe") or {}).get("phases", [])]
    wanted = [p.epochs for p in stages.recipe_for(stage, epochs).phases]
    problems = [p for p in [extension_problem(done, wanted)] if p]
    trained_on = published_metrics.get("limit")
    if trained_on != limit:
        problems.append(
            "the published run was trained on "
            + (f"the first {trained_on:,} images: set 'Limit images' to {trained_on:,}" if trained_on else
               "all images: set 'Limit images' to 0")
        )  # fmt: skip
    return problems
