"""Training runs as records: every training writes a new folder ``checkpoints/STAGE/runs/RUN_ID/`` and never touches
the published artifacts in ``checkpoints/STAGE/``; ``promote`` makes a finished run the published one and keeps the
run it replaces, so a promotion is undone by promoting that one back.

Run bookkeeping only (ids, folders, states, liveness, listing; completing a promotion a killed process left half
done); promotion and deletion themselves are publish.py's. No Keras here, so the CLI, the
dashboard and its job panel read runs without importing it.

A run folder holds ``train_info.json`` (written when the run starts, completed when training ends: the run's one
record of how it was trained), ``progress.json`` (live state, polled by other processes), ``log.csv`` (Keras'
CSVLogger), ``tensorboard/``, ``backup/`` (Keras' BackupAndRestore, while unfinished), and when finished
``model.keras``, ``history.json``, ``metrics.json`` and ``test_predictions.npz``.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from . import artifacts, runlog
from .artifacts import write_json

RUNS_DIR = "runs"
PROGRESS = "progress.json"
BACKUP = "backup"
TENSORBOARD = "tensorboard"
JOURNAL = ".promote.json"
# The one vocabulary of run states. A run's progress.json says one of ACTIVE while its process works, then one of
# ENDED; a dashboard job is STARTING until its process writes progress, IDLE when the stage has none.
STARTING, IDLE = "starting", "idle"
ACTIVE = ("loading", "running", "evaluating")
ENDED = ("done", "failed", "cancelled", "killed")
LIVE = (STARTING, *ACTIVE)
# what a published stage consists of, in the order a promotion moves it (metrics last: readers never see new
# metrics beside an old model); robustness.json is optional and belongs to the model it was measured on
PUBLISHED = (artifacts.MODEL, artifacts.TRAIN_INFO, artifacts.HISTORY, artifacts.PREDICTIONS, artifacts.METRICS)
OPTIONAL = (artifacts.ROBUSTNESS, artifacts.VAL_PREDICTIONS, artifacts.EMBEDDING)


class RunError(ValueError):
    """A run that cannot be promoted, deleted or resumed; str(e) says why and what to do."""


def stage_folder(stage: str, root: Path | None = None, where: Path | None = None) -> Path:
    """The stage's published folder: ``where`` when given (``train --out``), else ROOT/STAGE."""
    return Path(where) if where is not None else artifacts.stage_dir(stage, root)


def runs_root(stage: str, root: Path | None = None, where: Path | None = None) -> Path:
    return stage_folder(stage, root, where) / RUNS_DIR


def new_run_id() -> str:
    """Sortable and readable: UTC date and time, then 4 random hex digits (two runs in one second differ)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def valid_run_id(run_id: str) -> bool:
    return bool(run_id) and all(c.isalnum() or c in "-_" for c in run_id) and not run_id.startswith("-")


def run_dir(stage: str, run_id: str, root: Path | None = None, where: Path | None = None) -> Path:
    if not valid_run_id(str(run_id)):
        raise RunError(f"{run_id!r} is not a run id (letters, digits, '-' and '_')")
    return runs_root(stage, root, where) / str(run_id)


class FinishedRun(NamedTuple):
    """The files of a finished run that a continuation reads (``finished_run``)."""

    folder: Path
    info: dict  # train_info.json
    history: list  # history.json's epoch rows
    test_accuracy: float | None  # its own evaluation's (None: not evaluated, or metrics.json of another run)


def finished_run(value, stage: str, where: Path) -> FinishedRun:
    """The finished run a ``--continue-from`` value names: "published" (the stage folder ``where``), a run id of the
    stage, or a folder; RunError when it holds none."""
    folder = Path(value)
    if str(value) == "published":
        folder = Path(where)
    elif valid_run_id(str(value)) and (run := run_dir(stage, str(value), where=where)).is_dir():
        folder = run
    try:
        info = artifacts.read_json(folder / artifacts.TRAIN_INFO)
        history = artifacts.read_json(folder / artifacts.HISTORY)["epochs"]
    except (artifacts.ArtifactError, KeyError, TypeError) as e:
        raise RunError(f"{folder} holds no finished run to continue ({e})") from e
    try:
        metrics = artifacts.read_json(folder / artifacts.METRICS)
        test_accuracy = metrics.get("test_accuracy") if metrics.get("run_id") == info.get("run_id") else None
    except (artifacts.ArtifactError, AttributeError):
        test_accuracy = None
    return FinishedRun(folder, info, history, test_accuracy)


# ---- liveness and progress ---------------------------------------------------------------------------------------


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


def write_progress(folder: Path, payload: dict) -> None:
    write_json(Path(folder) / PROGRESS, payload)


def read_progress(folder: Path) -> dict:
    try:
        progress = json.loads((Path(folder) / PROGRESS).read_text())
    except (OSError, ValueError):
        return {}
    return progress if isinstance(progress, dict) else {}


def is_live(progress: dict) -> bool:
    return progress.get("state") in ACTIVE and progress.get("pid") != os.getpid() and pid_alive(progress.get("pid"))


# ---- listing -----------------------------------------------------------------------------------------------------


@dataclass
class Run:
    stage: str
    run_id: str
    folder: Path | None  # None: the published run has no run folder (it was committed, never trained here)
    state: str  # training | finished | interrupted | failed | damaged
    published: bool = False
    info: dict | None = None  # train_info.json
    metrics: dict | None = None
    progress: dict | None = None
    problem: str | None = None  # why damaged, failed or interrupted
    published_folder: Path | None = None  # where a folder-less published run's files are

    @property
    def test_accuracy(self) -> float | None:
        return (self.metrics or {}).get("test_accuracy")

    @property
    def started(self) -> float | None:
        return (self.info or {}).get("started")

    @property
    def epochs(self) -> int | None:
        return (self.info or {}).get("epochs")

    @property
    def epochs_done(self) -> int:
        try:
            return len(runlog.read_log(self.folder)) if self.folder else (self.epochs or 0)
        except OSError:
            return 0

    @property
    def train_seconds(self) -> float | None:
        return (self.info or {}).get("train_seconds")

    @property
    def machine(self) -> str | None:
        return ((self.info or {}).get("train_runtime") or {}).get("machine")

    def history(self) -> list[dict]:
        """Per-epoch rows: history.json when the run finished, else what its log holds so far."""
        folder = self.folder or self.published_folder
        if folder is None:
            return []
        try:
            hist = json.loads((Path(folder) / artifacts.HISTORY).read_text())
            rows = hist.get("epochs", []) if isinstance(hist, dict) else hist
            return rows if isinstance(rows, list) else []
        except (OSError, ValueError):
            return runlog.read_log(folder)

    @property
    def label(self) -> str:
        return self.run_id + (" (published)" if self.published else "")

    @property
    def resumable(self) -> bool:
        return self.state == "interrupted" and self.folder is not None

    def row(self) -> dict:
        """One line of a runs table (CLI and pages)."""
        started = self.started
        return {
            "run": self.run_id,
            "published": self.published,
            "state": self.state,
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else "-",
            "epochs": f"{self.epochs_done}/{self.epochs}" if self.state != "finished" and self.epochs else self.epochs,
            "test accuracy": self.test_accuracy,
            "train seconds": self.train_seconds,
            "machine": self.machine,
            "note": self.problem,
        }


def published_run_id(stage: str, root: Path | None = None, where: Path | None = None) -> str | None:
    try:
        info = json.loads((stage_folder(stage, root, where) / artifacts.TRAIN_INFO).read_text())
        return info.get("run_id") if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


def read_run(stage: str, folder: Path, published_id: str | None = None) -> Run:
    """One run folder, checked. Never raises for a damaged folder: the run is listed as damaged with its reason."""
    from . import results  # Keras-free validation of finished artifacts

    folder = Path(folder)
    run_id = folder.name
    progress = read_progress(folder)
    try:
        info = json.loads((folder / artifacts.TRAIN_INFO).read_text())
        if not isinstance(info, dict):
            raise ValueError("not an object")
    except FileNotFoundError:
        info = None
    except (OSError, ValueError) as e:
        return Run(stage, run_id, folder, "damaged", run_id == published_id, problem=f"train_info.json: {e}")
    run = Run(stage, run_id, folder, "interrupted", run_id == published_id, info=info, progress=progress)
    if is_live(progress):
        run.state = "training"
        return run
    if info is None:  # stopped before its record was written (e.g. the data could not be read)
        if progress.get("state") in ("failed", "cancelled"):
            run.state, run.problem = "failed", progress.get("message") or progress["state"]
        else:
            run.state, run.problem = "damaged", "train_info.json is missing"
        return run
    if info.get("finished") is None:  # training never completed
        if progress.get("state") == "failed":
            run.state, run.problem = "failed", progress.get("message")
        else:
            run.problem = progress.get("message") or "stopped before training finished"
        return run
    checked = results.load_folder(stage, folder)
    if checked.status == "untrained" or not (folder / artifacts.METRICS).exists():
        run.state, run.problem = "interrupted", "trained, not evaluated yet (resume evaluates it)"
        return run
    if checked.status != "trained":
        run.state, run.problem = "damaged", checked.error
        return run
    run.state, run.metrics = "finished", checked.metrics
    return run


def list_runs(stage: str, root: Path | None = None, where: Path | None = None) -> list[Run]:
    """Every run of ``stage``, oldest first, and the published one (also when it has no run folder)."""
    try:
        finish_promotion(stage, root, where)
    except OSError:
        pass  # a read-only checkpoints folder: list what is there; the next writer completes the promotion
    published_id = published_run_id(stage, root, where)
    folder = runs_root(stage, root, where)
    out = []
    if folder.is_dir():
        for d in sorted(folder.iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                out.append(read_run(stage, d, published_id))
    if published_id and not any(r.run_id == published_id for r in out):
        from . import results

        res = results.load_folder(stage, stage_folder(stage, root, where))
        out.append(
            Run(
                stage,
                published_id,
                None,
                "finished" if res.status == "trained" else "damaged",
                True,
                info=res.train_info,
                metrics=res.metrics,
                problem=res.error,
                published_folder=stage_folder(stage, root, where),
            )
        )
    out.sort(key=lambda r: (r.started or (r.progress or {}).get("updated") or 0, r.run_id))
    return out


def get_run(stage: str, run_id: str, root: Path | None = None, where: Path | None = None) -> Run:
    for r in list_runs(stage, root, where):
        if r.run_id == run_id:
            return r
    raise RunError(f"{stage} has no run {run_id!r} (`python -m cifar_dash runs {stage}` lists them)")


def live_runs(stage: str, root: Path | None = None, where: Path | None = None) -> list[Run]:
    folder = runs_root(stage, root, where)
    if not folder.is_dir():
        return []
    out = []
    for d in sorted(folder.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and is_live(progress := read_progress(d)):
            out.append(Run(stage, d.name, d, "training", progress=progress))
    return out


def interrupted_folders(stage: str, root: Path | None = None, where: Path | None = None) -> list[Path]:
    """The folders of the runs ``list_runs`` calls interrupted (stopped before training finished, or trained and not
    evaluated), oldest first, from their progress and train_info alone: no model or metrics is checked."""
    folder = runs_root(stage, root, where)
    found = []
    for d in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not d.is_dir() or d.name.startswith(".") or is_live(progress := read_progress(d)):
            continue
        try:
            info = json.loads((d / artifacts.TRAIN_INFO).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict):
            continue
        unfinished = info.get("finished") is None and progress.get("state") != "failed"
        if unfinished or (info.get("finished") is not None and not (d / artifacts.METRICS).exists()):
            found.append(((info.get("started") or progress.get("updated") or 0, d.name), d))
    return [d for _, d in sorted(found)]


def compare(a: Run, b: Run) -> dict:
    """What changed from run ``a`` to run ``b``: test accuracy, per-class recall, epochs, training time."""
    from .data import CLASS_NAMES

    def recalls(run):
        pc = (run.metrics or {}).get("per_class") or []
        return [row.get("recall") for row in pc] if len(pc) == len(CLASS_NAMES) else [None] * len(CLASS_NAMES)

    ra, rb = recalls(a), recalls(b)
    acc_a, acc_b = a.test_accuracy, b.test_accuracy
    return {
        "test_accuracy": (acc_a, acc_b, acc_b - acc_a if None not in (acc_a, acc_b) else None),
        "per_class": [
            {"class": c, "a": x, "b": y, "change": y - x if None not in (x, y) else None}
            for c, x, y in zip(CLASS_NAMES, ra, rb)
        ],
        "epochs": (a.epochs, b.epochs),
        "train_seconds": (a.train_seconds, b.train_seconds),
        "machine": (a.machine, b.machine),
        "n_test": ((a.metrics or {}).get("n_test"), (b.metrics or {}).get("n_test")),
    }


def finish_promotion(stage: str, root: Path | None = None, where: Path | None = None) -> None:
    """Complete a promotion a killed process left half done (its journal names the staged files still to move), and
    clear leftovers of one killed before it began. Every step is a rename, so finishing is safe to repeat."""
    published = stage_folder(stage, root, where)
    journal = published / JOURNAL
    try:
        plan = json.loads(journal.read_text())
    except FileNotFoundError:
        plan = None
    except (OSError, ValueError):
        plan = None
        journal.unlink(missing_ok=True)  # written atomically, so unreadable means not ours; nothing moved yet
    if plan:
        staging = published / plan["staging"]
        for name in plan.get("remove", []):
            (published / name).unlink(missing_ok=True)
        for name in plan["files"]:
            if (staging / name).exists():
                os.replace(staging / name, published / name)
        journal.unlink(missing_ok=True)
    for leftover in published.glob(".promote-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    runs = runs_root(stage, root, where)
    if runs.is_dir():
        for leftover in list(runs.glob(".keep-*")) + list(runs.glob(".deleting-*")):
            shutil.rmtree(leftover, ignore_errors=True)
