"""Publishing a run: ``promote`` makes a finished run the published one (``checkpoints/STAGE/``), one rename per file
under a journal that ``runs.finish_promotion`` completes if the process dies part way, and keeps the run it replaces
as a run folder, so a promotion is undone by promoting that one back. ``delete`` removes a run folder (never the
published run, never one still training). One promotion or deletion of a stage at a time (``stage_lock``)."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from . import artifacts
from .artifacts import write_json
from .runs import (
    JOURNAL,
    OPTIONAL,
    PUBLISHED,
    RunError,
    finish_promotion,
    get_run,
    published_run_id,
    runs_root,
    stage_folder,
    valid_run_id,
)


@contextmanager
def stage_lock(stage: str, root: Path | None = None, where: Path | None = None):
    """One promotion or deletion of a stage's runs at a time (an advisory lock; released if the process dies)."""
    folder = runs_root(stage, root, where)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    while True:  # the file is removed on release: lock it only while it is still the one at ``path``
        fh = open(path, "a")
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            if os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        fh.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held: nothing is left behind
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the filesystem allows (files are only ever replaced by rename, never written in place, so
    a link is as safe as a copy and costs no space), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _keep_published_as_run(stage: str, root: Path | None = None, where: Path | None = None) -> str | None:
    """Make sure the published run also exists as a run folder before it is replaced; returns its id."""
    published = stage_folder(stage, root, where)
    run_id = published_run_id(stage, root, where)
    if not run_id or not valid_run_id(run_id):
        run_id = "published-" + datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    target = runs_root(stage, root, where) / run_id
    if target.exists():  # measured on the published model after it was promoted (`robustness`): goes with it
        for name in OPTIONAL:
            if (published / name).exists() and not (target / name).exists():
                _link_or_copy(published / name, target / name)
        return run_id
    tmp = runs_root(stage, root, where) / f".keep-{run_id}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    kept = 0
    for name in PUBLISHED + OPTIONAL:
        if (published / name).exists():
            _link_or_copy(published / name, tmp / name)
            kept += 1
    if not kept:
        shutil.rmtree(tmp)
        return None
    os.replace(tmp, target)
    return run_id


def promote(stage: str, run_id: str, root: Path | None = None, where: Path | None = None) -> dict:
    """Publish a finished run: its files replace ``checkpoints/STAGE/``'s, one rename each under a journal that a
    later call completes if this process dies part way. The run it replaces is kept as a run folder. Returns
    {"promoted", "replaced", "old_accuracy", "new_accuracy"}."""
    with stage_lock(stage, root, where):
        finish_promotion(stage, root, where)
        run = get_run(stage, run_id, root, where)
        if run.published:
            raise RunError(f"{stage} run {run_id} is already the published one")
        if run.state == "training":
            raise RunError(f"{stage} run {run_id} is still training; wait for it to finish")
        if run.state != "finished":
            raise RunError(f"{stage} run {run_id} is {run.state} ({run.problem}); only a finished run can be promoted")
        published = stage_folder(stage, root, where)
        old_accuracy = None
        try:
            old_accuracy = json.loads((published / artifacts.METRICS).read_text()).get("test_accuracy")
        except (OSError, ValueError, AttributeError):
            pass
        replaced = _keep_published_as_run(stage, root, where)
        staging_name = f".promote-{run_id}"
        staging = published / staging_name
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        files = [n for n in PUBLISHED + OPTIONAL if (run.folder / n).exists()]
        for name in files:
            _link_or_copy(run.folder / name, staging / name)
        remove = [n for n in OPTIONAL if n not in files and (published / n).exists()]  # measured on the old model
        order = [n for n in files if n != artifacts.METRICS] + [n for n in files if n == artifacts.METRICS]
        write_json(published / JOURNAL, {"run_id": run_id, "staging": staging_name, "files": order, "remove": remove})
        finish_promotion(stage, root, where)
        return {"promoted": run_id, "replaced": replaced, "old_accuracy": old_accuracy, "new_accuracy": run.test_accuracy}


def delete(stage: str, run_id: str, root: Path | None = None, where: Path | None = None) -> None:
    """Delete a run folder: never the published run, never one still training."""
    with stage_lock(stage, root, where):
        run = get_run(stage, run_id, root, where)
        if run.published:
            raise RunError(f"{stage} run {run_id} is the published model; promote another run before deleting it")
        if run.state == "training":
            raise RunError(f"{stage} run {run_id} is still training; cancel it first")
        if run.folder is None:
            raise RunError(f"{stage} run {run_id} has no folder to delete")
        doomed = run.folder.parent / f".deleting-{run_id}"
        os.replace(run.folder, doomed)  # gone from listings in one step; the removal may then take its time
        shutil.rmtree(doomed, ignore_errors=True)
