import json
import time

import pytest

from cifar_dash import artifacts, jobs, results, runs


@pytest.fixture
def root(checkpoints_copy):
    return checkpoints_copy


def _wait(stage: str, timeout: float = 600, poll: float = 0.5):
    """The job's status once it is no longer active (or at the timeout)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = jobs.status(stage)
        if not st.active:
            return st
        time.sleep(poll)
    return jobs.status(stage)


def _published(root):
    return {p.name: p.read_bytes() for p in (root / "mlp").iterdir() if p.is_file()}


def test_a_job_trains_a_new_run_in_the_background_and_leaves_the_published_model(root, cifar_npz):
    before = _published(root)
    rec = jobs.start("mlp", epochs=2, limit=300, data_path=str(cifar_npz))
    with pytest.raises(jobs.JobRunning, match="already training"):
        jobs.start("mlp", epochs=1, limit=100)
    st = _wait("mlp", timeout=240)
    assert st.state == "done", (st.message, jobs.tail_log("mlp"))
    assert _published(root) == before
    run = runs.read_run("mlp", jobs.run_folder(rec))
    assert run.state == "finished" and run.run_id == rec["run_id"] and not run.published
    assert run.metrics["n_test"] == 200 and run.epochs == 2  # 200 synthetic test images
    assert rec["pid"] == st.progress["pid"] and [h["epoch"] for h in st.history] == [1, 2]
    assert "test accuracy" in jobs.tail_log("mlp")


def test_cancel_leaves_the_published_model(root, cifar_npz):
    model_before = artifacts.file_sha256(root / "mlp" / "model.keras")
    jobs.start("mlp", epochs=300, limit=400, data_path=str(cifar_npz))
    for _ in range(400):
        if jobs.status("mlp").state == "running":
            break
        jobs.time.sleep(0.1)
    assert jobs.cancel("mlp")
    st = _wait("mlp", timeout=120)
    assert st.state == "cancelled" and "can be resumed" in st.message
    assert artifacts.file_sha256(root / "mlp" / "model.keras") == model_before


def test_killed_job_is_reported(root, cifar_npz):
    import os
    import signal

    jobs.start("mlp", epochs=300, limit=400, data_path=str(cifar_npz))
    for _ in range(400):
        if jobs.status("mlp").state == "running":
            break
        jobs.time.sleep(0.1)
    os.killpg(jobs.status("mlp").job["pid"], signal.SIGKILL)
    st = _wait("mlp", timeout=60)
    assert st.state == "killed" and "resumed" in st.message
    assert results.load_result("mlp").status == "trained"


def test_idle_stage():
    assert jobs.status("vgg_aug").state == "idle" and not jobs.cancel("vgg_aug")


def _arg(cmd: list, flag: str):
    """The value given to ``flag`` on a command line."""
    return cmd[cmd.index(flag) + 1]


def test_sidebar_options_reach_the_training_command(root, cifar_npz):
    rec = jobs.start("mlp", epochs=1, limit=120, data_path=str(cifar_npz), mixed_precision=True, batch_size=32)
    assert "--mixed-precision" in rec["cmd"] and _arg(rec["cmd"], "--batch-size") == "32"
    st = _wait("mlp", timeout=240)
    assert st.state == "done", (st.message, jobs.tail_log("mlp"))
    r = results.load_folder("mlp", jobs.run_folder(rec))
    assert r.train_info["mixed_precision"] is True and r.metrics["recipe"]["mixed_precision"] is True
    assert r.train_info["recipe"]["batch_size"] == 32 and r.metrics["recipe"]["batch_size"] == 32
    with pytest.raises(ValueError, match="takes backbone"):
        jobs.start("resnet50v2", backbone="vgg16")
    with pytest.raises(ValueError, match="batch size must be at least 1"):
        jobs.start("mlp", batch_size=-4)


def test_a_job_can_continue_the_published_run(root, cifar_npz):
    before = json.loads((root / "mlp" / "train_info.json").read_text())
    rec = jobs.start("mlp", epochs=before["epochs"] + 1, limit=400, data_path=str(cifar_npz), continue_from="published")
    assert _arg(rec["cmd"], "--continue-from") == "published"
    st = _wait("mlp", timeout=240)
    assert st.state == "done", (st.message, jobs.tail_log("mlp"))
    info = json.loads((jobs.run_folder(rec) / "train_info.json").read_text())
    assert info["epochs"] == before["epochs"] + 1 and info["continued_from"]["run_id"] == before["run_id"]


def test_a_refused_job_says_why_and_leaves_no_run(root, cifar_npz):
    """A continuation the published run cannot give (other limit) is refused while the run loads: the job ends
    failed with the refusal's own words, and the stage keeps no empty failed run."""
    before = json.loads((root / "mlp" / "train_info.json").read_text())
    runs_before = [r.run_id for r in runs.list_runs("mlp")]
    rec = jobs.start("mlp", epochs=before["epochs"] + 1, limit=123, data_path=str(cifar_npz), continue_from="published")
    st = _wait("mlp", timeout=240)
    assert st.state == "failed" and f"limit {before['limit']}, not 123" in st.message, (st.message, jobs.tail_log("mlp"))
    assert not jobs.run_folder(rec).exists() and [r.run_id for r in runs.list_runs("mlp")] == runs_before
    assert jobs.resumable("mlp") is None


def test_a_run_started_in_a_terminal_shows_up_and_blocks_a_second_one(root):
    from tests.test_train import _fake_live_run

    proc = _fake_live_run(runs.runs_root("cnn") / "20260101-000000-abcd")
    try:
        st = jobs.status("cnn")
        assert st.active and st.external and st.state == "running" and f"pid {proc.pid}" in st.message
        assert "20260101-000000-abcd" in st.message
        with pytest.raises(jobs.JobRunning, match="outside the dashboard"):
            jobs.start("cnn", epochs=1)
        assert jobs.cancel("cnn")  # SIGTERM, as for the dashboard's own jobs
        assert proc.wait(timeout=30) != 0
        assert not jobs.status("cnn").active
    finally:
        proc.kill()
        proc.wait()


def test_a_cancelled_job_resumes_from_the_dashboard(root, cifar_npz):

    with pytest.raises(ValueError, match="no interrupted dashboard run"):
        jobs.resume("mlp")
    rec = jobs.start("mlp", epochs=20, limit=400, data_path=str(cifar_npz))
    for _ in range(1200):
        p = jobs.status("mlp").progress
        if p.get("state") == "running" and p.get("epoch", 0) >= 3:
            break
        jobs.time.sleep(0.1)
    assert jobs.cancel("mlp")
    assert _wait("mlp", timeout=120).state == "cancelled"
    saved = jobs.resumable("mlp")  # offered as soon as the cancel is recorded, while the process may still be exiting
    assert saved and saved["epochs"] == 20 and 2 <= saved["epochs_done"] < 20 and saved["run_id"] == rec["run_id"]

    again = jobs.resume("mlp")
    assert _arg(again["cmd"], "--resume") == rec["run_id"] and again["lineage"] == [rec["pid"]]
    assert _arg(again["cmd"], "--data") == _arg(rec["cmd"], "--data")
    assert again["run_id"] == rec["run_id"]
    st = _wait("mlp", timeout=240)
    assert st.state == "done", (st.message, jobs.tail_log("mlp"))
    log = jobs.tail_log("mlp", 10_000)
    assert "cancelled" in log and f"resuming mlp run {rec['run_id']}" in log  # one log, both processes
    hist = json.loads((jobs.run_folder(rec) / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in hist] == list(range(1, 21))
    assert jobs.resumable("mlp") is None  # the run finished


@pytest.mark.slow  # three background trainings one after another (about 30 s); CI runs it with the slow checks
def test_a_finished_job_stays_done_while_other_runs_of_the_stage_come_and_go(root, cifar_npz):
    from tests.test_train import _fake_live_run

    rec = jobs.start("mlp", epochs=1, limit=300, data_path=str(cifar_npz))
    assert _wait("mlp", timeout=240).state == "done"
    jobs._POPEN[rec["pid"]].wait(timeout=60)
    proc = _fake_live_run(runs.runs_root("mlp") / "20260101-000000-abcd")
    try:
        st = jobs._job_status("mlp")
        assert st.state == "done" and st.progress["pid"] == rec["pid"], (st.state, st.message)
        assert jobs.status("mlp").external  # the live one shows in the sidebar meanwhile
    finally:
        proc.kill()
        proc.wait()
    assert jobs.status("mlp").state == "done"
