"""The files a training run leaves in its work folder (progress.json, state.json) and what other processes read
from them: whether a run is live, what ``--resume`` would continue. No Keras here, so the dashboard's job panel and
the CLI read run state without importing it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .artifacts import write_json

PROGRESS = "progress.json"
STATE = "state.json"
WORK_MODEL = "model.keras"


ACTIVE = ("loading", "running", "evaluating")


def saved_run(work: Path) -> dict | None:
    """What ``--resume`` would continue in this work folder: {"epochs_done", "epochs", "partial" (the epoch part
    way through, or None), "train_seconds", "pid" (the process that last saved it)}, else None."""
    work = Path(work)
    try:
        state = json.loads((work / STATE).read_text())
        epochs = sum(int(p["epochs"]) for p in state["config"]["recipe"]["phases"])
        done = int(state["epochs_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (work / WORK_MODEL).exists() or (done == 0 and not state.get("partial")):
        return None
    return {
        "epochs_done": done,
        "epochs": epochs,
        "partial": state.get("partial"),
        "train_seconds": float(state.get("train_seconds") or 0.0),
        "pid": state.get("pid"),
    }


def pid_alive(pid) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        if int(pid) <= 0:  # 0 and negatives would signal process groups
            return False
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError, ValueError, TypeError, OverflowError):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return True


JOB_PROGRESS_ENV = "CIFAR_DASH_JOB_PROGRESS"


def write_progress(path: Path, payload: dict) -> None:
    """progress.json of the work folder (any process can poll it), and a copy for the dashboard job that started
    this process (its own file, which no later run of the same folder overwrites: its final state stays exact)."""
    write_json(path, payload)
    mirror = os.environ.get(JOB_PROGRESS_ENV)
    if mirror:
        try:
            write_json(Path(mirror), payload)
        except OSError:
            pass  # the job's copy is a convenience; the work folder's file is the record


def live_run(work: Path) -> dict | None:
    """The progress of a run another live process is making in this work folder (its progress.json names a live
    pid in an active state), else None. Runs started from a terminal and from the dashboard both write it."""
    try:
        progress = json.loads((Path(work) / PROGRESS).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(progress, dict) or progress.get("state") not in ACTIVE or progress.get("pid") == os.getpid():
        return None
    return progress if pid_alive(progress.get("pid")) else None
