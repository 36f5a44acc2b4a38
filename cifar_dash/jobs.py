"""Background training jobs: `python -m cifar_dash train` as a subprocess, one per stage at a time.

The dashboard never trains in its own process. A job is a JSON record plus a log file under the cache folder; it
names its run before the process starts (``train --run-id``), and its live state comes from that run folder's
progress.json and log.csv (runs.py), so any process can poll it. No Keras here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import artifacts, runlog, runs, stages
from .request import TrainingRequest

_POPEN: dict[int, subprocess.Popen] = {}  # children of this process, kept to reap them


class JobRunning(RuntimeError):
    """This stage already has a live training job."""


@dataclass
class JobStatus:
    stage: str
    state: str  # runs.IDLE, runs.LIVE or runs.ENDED
    job: dict | None = None
    progress: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    message: str | None = None
    external: bool = False  # a run started outside the dashboard (a terminal), seen through its progress.json

    @property
    def active(self) -> bool:
        return self.state in runs.LIVE


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
    return runs.pid_alive(pid)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def start(request: TrainingRequest | str, extra_env: dict | None = None, **options) -> dict:
    """Start a training request (or a stage key with TrainingRequest's fields as keywords) in the background as
    ``python -m cifar_dash train``, in a new run of the stage's folder. Raises JobRunning when one is already live,
    and the request's own error when it cannot run."""
    if isinstance(request, str):
        request = TrainingRequest(request, **options)
    elif options:
        raise TypeError(f"start(request) takes no further options ({', '.join(options)})")
    out = artifacts.stage_dir(request.stage)
    request = dataclasses.replace(request, out_dir=str(out), run_id=runs.new_run_id()).validate()
    cmd = [sys.executable, "-m", "cifar_dash", "train", *request.to_argv()]
    meta = {"epochs": request.epochs, "limit": request.limit, "run_id": request.run_id}
    return _launch(request.stage, cmd, out, meta, extra_env)


def run_folder(job: dict) -> Path:
    return runs.runs_root(job["stage"], where=Path(job["out"])) / job["run_id"]


def resumable(stage: str) -> dict | None:
    """{"run_id", "epochs_done", "epochs"} of the run the stage's last dashboard job left interrupted, when that job
    is over and ``resume`` can continue it; None otherwise."""
    job = _read(_record_path(stage))
    if not job or not job.get("run_id") or _job_status(stage).active:
        return None
    run = runs.read_run(stage, run_folder(job))
    if not run.resumable:
        return None
    return {"run_id": run.run_id, "epochs_done": run.epochs_done, "epochs": run.epochs, "note": run.problem}


def resume(stage: str, extra_env: dict | None = None) -> dict:
    """Continue the stage's cancelled, killed or failed dashboard job's run where its last backup left it
    (``train --resume RUN_ID``). Raises JobRunning when a run is live, ValueError when there is nothing to resume."""
    job = _read(_record_path(stage))
    if not resumable(stage):
        raise ValueError(f"{stage}: no interrupted dashboard run to resume")
    started = TrainingRequest.from_argv(job["cmd"][job["cmd"].index("train") + 1 :])
    again = TrainingRequest(
        stage, out_dir=job["out"], resume=job["run_id"], data_path=started.data_path, speed=started.speed
    )
    cmd = [sys.executable, "-m", "cifar_dash", "train", *again.to_argv()]
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
        {"epochs": job.get("epochs"), "limit": job.get("limit"), "lineage": lineage, "run_id": job["run_id"]},
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
        env = {**os.environ, "PYTHONPATH": str(artifacts.project_root()), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
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
    own = (st.job or {}).get("run_id")
    for run in runs.live_runs(stage):
        if run.run_id != own:
            p = run.progress
            return JobStatus(
                stage,
                p["state"],
                None,
                p,
                runlog.read_log(run.folder),
                f"run {run.run_id}, started outside the dashboard (pid {p['pid']})",
                external=True,
            )
    return st


def _job_status(stage: str) -> JobStatus:
    job = _read(_record_path(stage))
    if not job:
        return JobStatus(stage, runs.IDLE)
    if not job.get("run_id"):  # a record from before runs had folders
        return JobStatus(stage, runs.IDLE)
    folder = run_folder(job)
    progress = runs.read_progress(folder)
    if progress.get("pid") != job["pid"]:
        progress = {}  # written by an earlier process of the same run (before a resume)
    history = runlog.read_log(folder) if progress else []
    alive = _alive(job["pid"])
    state = progress.get("state", runs.STARTING)
    message = progress.get("message")
    refused = (
        [line for line in tail_log(stage, 5).splitlines() if line.startswith("error: ")]
        if (not alive and state in runs.LIVE)
        else []
    )
    if refused:  # the command refused to start (e.g. it lost a start race to a run from a terminal)
        state, message = "failed", refused[-1][len("error: ") :]
    elif not alive and state in runs.LIVE:
        code = _POPEN[job["pid"]].returncode if job["pid"] in _POPEN else None
        state = "killed"
        message = (
            (
                f"the training process ended unexpectedly (exit code {code}); run {job['run_id']} keeps its "
                "last backup and can be resumed"
            )
            if code is not None
            else (
                f"the training process is gone (killed or machine restarted); run {job['run_id']} keeps its last "
                "backup and can be resumed"
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
