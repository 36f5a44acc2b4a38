"""Background training jobs: `python -m cifar_dash train` as a subprocess, one per stage at a time.

The dashboard never trains in its own process. A job is a JSON record plus a log file under the cache folder; its
live state comes from the progress.json and state.json the training command writes, so any process can poll it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import artifacts, runstate, stages

ACTIVE_STATES = ("starting", "loading", "running", "evaluating")
_POPEN: dict[int, subprocess.Popen] = {}  # children of this process, kept to reap them


class JobRunning(RuntimeError):
    """This stage already has a live training job."""


@dataclass
class JobStatus:
    stage: str
    state: str  # idle | starting | loading | running | evaluating | done | failed | cancelled | killed
    job: dict | None = None
    progress: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    message: str | None = None
    external: bool = False  # a run started outside the dashboard (a terminal), seen through its progress.json

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def jobs_dir() -> Path:
    d = artifacts.cache_root() / "jobs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _record_path(stage: str) -> Path:
    return jobs_dir() / f"{stage}.json"


def _alive(pid: int) -> bool:
    p = _POPEN.get(pid)
    if p is not None:
        return p.poll() is None
    return runstate.pid_alive(pid)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def start(
    stage: str,
    epochs: int | Sequence[int] | None = None,
    limit: int | None = None,
    data_path: str | None = None,
    resume: bool = False,
    extra_env: dict | None = None,
    backbone: str | None = None,
    mixed_precision: bool = False,
    continue_from: str | Path | None = None,
) -> dict:
    """Start training ``stage`` in the background. Raises JobRunning when one is already live."""
    stages.recipe_for(stages.get(stage), epochs, backbone)  # an unknown stage, epochs or backbone fails here
    out = artifacts.stage_dir(stage)
    cmd = [sys.executable, "-m", "cifar_dash", "train", stage, "--out", str(out)]
    if epochs:  # one count for every phase, or one per phase
        cmd += ["--epochs", str(int(epochs)) if isinstance(epochs, int) else ",".join(str(int(e)) for e in epochs)]
    if limit:
        cmd += ["--limit", str(int(limit))]
    if data_path:
        cmd += ["--data", str(data_path)]
    if resume:
        cmd += ["--resume"]
    if backbone:
        cmd += ["--backbone", backbone]
    if mixed_precision:
        cmd += ["--mixed-precision"]
    if continue_from:
        cmd += ["--continue-from", str(continue_from)]
    return _launch(stage, cmd, out, {"epochs": epochs, "limit": limit}, extra_env)


def resumable(stage: str) -> dict | None:
    """The saved state (runstate.saved_run) that the stage's last dashboard job left, when that job is over and
    ``resume`` can continue it; None otherwise (nothing saved, or the state belongs to another run)."""
    job = _read(_record_path(stage))
    if not job or _job_status(stage).active:  # a cancelled job may still be exiting: its state is saved already
        return None
    saved = runstate.saved_run(artifacts.work_dir(stage, Path(job["out"])))
    if not saved or saved["pid"] not in [job["pid"], *job.get("lineage", [])]:
        return None
    return saved


def resume(stage: str, extra_env: dict | None = None) -> dict:
    """Continue the stage's cancelled, killed or failed dashboard job where it stopped: the same command with
    ``--resume``. Raises JobRunning when a run is live, ValueError when there is nothing to resume."""
    job = _read(_record_path(stage))
    if not resumable(stage):
        raise ValueError(f"{stage}: no interrupted dashboard run to resume")
    cmd = list(job["cmd"]) + ([] if "--resume" in job["cmd"] else ["--resume"])
    deadline = time.time() + 60
    while _alive(job["pid"]) and time.time() < deadline:  # let the cancelled process finish exiting
        time.sleep(0.1)
    if _alive(job["pid"]):
        raise JobRunning(f"{stage}: the cancelled run (pid {job['pid']}) has not exited yet; try again in a minute")
    lineage = [*job.get("lineage", []), job["pid"]]
    return _launch(
        stage,
        cmd,
        Path(job["out"]),
        {"epochs": job.get("epochs"), "limit": job.get("limit"), "lineage": lineage},
        extra_env,
        append_log=True,
    )


def _launch(stage: str, cmd: list[str], out: Path, fields: dict, extra_env: dict | None, append_log: bool = False) -> dict:
    current = status(stage)
    if current.active and current.external:
        raise JobRunning(
            f"{stage} is already training outside the dashboard (pid {current.progress.get('pid')}); "
            "wait for it or cancel it first"
        )
    if current.active:
        raise JobRunning(
            f"{stage} is already training (pid {current.job['pid']}, started "
            f"{time.strftime('%H:%M:%S', time.localtime(current.job['started']))}); "
            "wait for it or cancel it first"
        )
    lock = jobs_dir() / f"{stage}.lock"
    try:  # two clicks in the same instant: only one gets the lock
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        if time.time() - lock.stat().st_mtime < 30:
            raise JobRunning(f"{stage} is being started by another request") from None
        lock.unlink(missing_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    try:
        log = jobs_dir() / f"{stage}.log"
        previous = _read(_record_path(stage)) or {}
        if previous.get("progress_file"):
            Path(previous["progress_file"]).unlink(missing_ok=True)
        own = jobs_dir() / f"{stage}-{uuid.uuid4().hex[:12]}.progress.json"  # this job's own state, see _job_status
        env = {
            **os.environ,
            "PYTHONPATH": str(artifacts.project_root()),
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
            runstate.JOB_PROGRESS_ENV: str(own),
        }
        with open(log, "a" if append_log else "w") as fh:  # a resumed job's log follows the interrupted one's
            proc = subprocess.Popen(
                cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=artifacts.project_root(),
                env=env,
                start_new_session=True,
            )
        _POPEN[proc.pid] = proc
        record = {
            "stage": stage,
            "pid": proc.pid,
            "cmd": cmd,
            "started": time.time(),
            "log": str(log),
            "out": str(out),
            "progress_file": str(own),
            **fields,
        }
        artifacts.write_json(_record_path(stage), record)
        return record
    finally:
        os.close(fd)
        lock.unlink(missing_ok=True)


def status(stage: str) -> JobStatus:
    st = _job_status(stage)
    if st.active:
        return st
    work = artifacts.work_dir(stage, artifacts.stage_dir(stage))
    other = runstate.live_run(work)
    if other and other.get("pid") != (st.job or {}).get("pid"):
        history = (_read(work / runstate.STATE) or {}).get("history", [])
        return JobStatus(
            stage, other["state"], None, other, history, f"started outside the dashboard (pid {other['pid']})", external=True
        )
    return st


def _job_status(stage: str) -> JobStatus:
    job = _read(_record_path(stage))
    if not job:
        return JobStatus(stage, "idle")
    work = artifacts.work_dir(stage, Path(job["out"]))
    # the job's own copy of its progress: a later run of the same folder cannot overwrite it
    progress = _read(Path(job["progress_file"])) if job.get("progress_file") else _read(work / runstate.PROGRESS)
    progress = progress or {}
    if progress.get("pid") != job["pid"]:
        progress = {}  # written by an earlier run
    state_file = _read(work / runstate.STATE) or {}
    history = state_file.get("history", []) if progress else []
    alive = _alive(job["pid"])
    state = progress.get("state", "starting")
    message = progress.get("message")
    refused = (
        [line for line in tail_log(stage, 5).splitlines() if line.startswith("error: ")]
        if (not alive and state in ACTIVE_STATES)
        else []
    )
    if refused:  # the command refused to start (e.g. it lost a start race to a run from a terminal)
        state, message = "failed", refused[-1][len("error: ") :]
    elif not alive and state in ACTIVE_STATES:
        code = _POPEN[job["pid"]].returncode if job["pid"] in _POPEN else None
        state = "killed"
        message = (
            (
                f"the training process ended unexpectedly (exit code {code}); the last good checkpoint is "
                "untouched and the run can be resumed"
            )
            if code is not None
            else (
                "the training process is gone (killed or machine restarted); the last good checkpoint is untouched "
                "and the run can be resumed"
            )
        )
        if "Traceback" in tail_log(stage, 40):
            message += ". Log: " + tail_log(stage, 3).strip().splitlines()[-1]
    return JobStatus(stage, state, job, progress, history, message)


def cancel(stage: str) -> bool:
    st = status(stage)
    if not st.active:
        return False
    try:  # training stops after the current batch, saves the epoch so far and says "cancelled"
        if st.external:
            os.kill(int(st.progress["pid"]), signal.SIGTERM)
        else:
            os.killpg(st.job["pid"], signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def wait(stage: str, timeout: float = 600, poll: float = 0.5) -> JobStatus:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = status(stage)
        if not st.active:
            return st
        time.sleep(poll)
    return status(stage)


def tail_log(stage: str, lines: int = 30) -> str:
    job = _read(_record_path(stage))
    if not job:
        return ""
    try:
        text = Path(job["log"]).read_text(errors="replace")
    except OSError:
        return ""
    text = text.replace("\r", "\n")
    return "\n".join(line for line in text.splitlines()[-lines:])


def all_status() -> dict[str, JobStatus]:
    return {s.key: status(s.key) for s in stages.STAGES}
