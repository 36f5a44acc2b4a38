import json
import shutil

import pytest

from cifar_dash import artifacts, jobs, results


@pytest.fixture
def root(trained_root, tmp_path, monkeypatch, cifar_npz):
    r = tmp_path / "ck"
    shutil.copytree(trained_root, r)
    monkeypatch.setenv("CIFAR_DASH_CHECKPOINTS", str(r))
    monkeypatch.setenv("CIFAR10_PATH", str(cifar_npz))
    return r


def test_job_runs_in_background_and_publishes(root, cifar_npz):
    before = json.loads((root / "mlp" / "metrics.json").read_text())["run_id"]
    rec = jobs.start("mlp", epochs=2, limit=300, data_path=str(cifar_npz))
    with pytest.raises(jobs.JobRunning, match="already training"):
        jobs.start("mlp", epochs=1, limit=100)
    st = jobs.wait("mlp", timeout=240)
    assert st.state == "done", (st.message, jobs.tail_log("mlp"))
    after = json.loads((root / "mlp" / "metrics.json").read_text())
    assert after["run_id"] != before and after["n_test"] == 200 and after["epochs"] == 2  # 200 synthetic test images
    assert results.load_result("mlp").status == "trained"
    assert rec["pid"] == st.progress["pid"]
    assert "test accuracy" in jobs.tail_log("mlp")


def test_cancel_keeps_the_previous_checkpoint(root, cifar_npz):
    model_before = artifacts.file_sha256(root / "mlp" / "model.keras")
    jobs.start("mlp", epochs=300, limit=400, data_path=str(cifar_npz))
    for _ in range(400):
        if jobs.status("mlp").state == "running":
            break
        jobs.time.sleep(0.1)
    assert jobs.cancel("mlp")
    st = jobs.wait("mlp", timeout=120)
    assert st.state == "cancelled" and "untouched" in st.message
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
    st = jobs.wait("mlp", timeout=60)
    assert st.state == "killed" and "resumed" in st.message
    assert results.load_result("mlp").status == "trained"


def test_idle_stage():
    assert jobs.status("vgg_aug").state == "idle" and not jobs.cancel("vgg_aug")


def test_sidebar_options_reach_the_training_command(root, cifar_npz):
    rec = jobs.start("mlp", epochs=1, limit=120, data_path=str(cifar_npz), mixed_precision=True)
    assert "--mixed-precision" in rec["cmd"]
    st = jobs.wait("mlp", timeout=240)
    assert st.state == "done", (st.message, jobs.tail_log("mlp"))
    r = results.load_result("mlp")
    assert r.train_info["mixed_precision"] is True and r.metrics["recipe"]["mixed_precision"] is True
    with pytest.raises(ValueError, match="takes backbone"):
        jobs.start("resnet50v2", backbone="vgg16")


def test_a_job_can_continue_the_published_run(root, cifar_npz):
    before = json.loads((root / "mlp" / "train_info.json").read_text())
    rec = jobs.start("mlp", epochs=before["epochs"] + 1, limit=400, data_path=str(cifar_npz), continue_from=root / "mlp")
    assert rec["cmd"][-2:] == ["--continue-from", str(root / "mlp")]
    st = jobs.wait("mlp", timeout=240)
    assert st.state == "done", (st.message, jobs.tail_log("mlp"))
    info = json.loads((root / "mlp" / "train_info.json").read_text())
    assert info["epochs"] == before["epochs"] + 1 and info["continued_from"]["run_id"] == before["run_id"]


def test_a_run_started_in_a_terminal_shows_up_and_blocks_a_second_one(root):
    from tests.test_train import _fake_live_run

    proc = _fake_live_run(artifacts.work_dir("cnn", artifacts.stage_dir("cnn")))
    try:
        st = jobs.status("cnn")
        assert st.active and st.external and st.state == "running" and f"pid {proc.pid}" in st.message
        with pytest.raises(jobs.JobRunning, match="outside the dashboard"):
            jobs.start("cnn", epochs=1)
        assert jobs.cancel("cnn")  # SIGTERM, as for the dashboard's own jobs
        assert proc.wait(timeout=30) != 0
        assert not jobs.status("cnn").active
    finally:
        proc.kill()
        proc.wait()


def test_a_job_that_loses_a_start_race_says_why(root, cifar_npz, monkeypatch):
    """A terminal run starts between the dashboard's check and its job's start: the job is refused by the training
    command itself and says so (not "killed")."""
    from tests.test_train import _fake_live_run

    proc = _fake_live_run(artifacts.work_dir("mlp", artifacts.stage_dir("mlp")))
    try:
        with monkeypatch.context() as m:
            m.setattr(jobs, "status", lambda stage: jobs.JobStatus(stage, "idle"))  # the check saw nothing yet
            jobs.start("mlp", epochs=1, limit=100, data_path=str(cifar_npz))
        for _ in range(600):
            st = jobs._job_status("mlp")
            if not st.active:
                break
            jobs.time.sleep(0.1)
        assert st.state == "failed" and st.message.startswith(f"mlp is already training into {root / 'mlp'}"), st
        assert jobs.status("mlp").external  # while the other run lives, the sidebar shows that one
    finally:
        proc.kill()
        proc.wait()
    assert jobs.status("mlp").state == "failed"


def test_a_cancelled_job_resumes_from_the_dashboard(root, cifar_npz):
    from cifar_dash import train

    with pytest.raises(ValueError, match="no interrupted dashboard run"):
        jobs.resume("mlp")
    rec = jobs.start("mlp", epochs=60, limit=400, data_path=str(cifar_npz))
    for _ in range(1200):
        p = jobs.status("mlp").progress
        if p.get("state") == "running" and p.get("epoch", 0) >= 3:
            break
        jobs.time.sleep(0.1)
    assert jobs.cancel("mlp")
    assert jobs.wait("mlp", timeout=120).state == "cancelled"
    saved = jobs.resumable("mlp")  # offered as soon as the cancel is saved, while the process may still be exiting
    assert saved and saved["epochs"] == 60 and 2 <= saved["epochs_done"] < 60 and saved["pid"] == rec["pid"]
    # a state saved by some other run in that folder is not offered
    work = artifacts.work_dir("mlp", root / "mlp")
    state = json.loads((work / train.STATE).read_text())
    (work / train.STATE).write_text(json.dumps({**state, "pid": 1}))
    assert jobs.resumable("mlp") is None
    (work / train.STATE).write_text(json.dumps(state))

    again = jobs.resume("mlp")
    assert again["cmd"] == rec["cmd"] + ["--resume"] and again["lineage"] == [rec["pid"]]
    st = jobs.wait("mlp", timeout=240)
    assert st.state == "done", (st.message, jobs.tail_log("mlp"))
    log = jobs.tail_log("mlp", 10_000)
    assert "cancelled" in log and f"resuming mlp after epoch {saved['epochs_done']}/60" in log  # one log, both runs
    hist = json.loads((root / "mlp" / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in hist] == list(range(1, 61))
    assert jobs.resumable("mlp") is None  # the finished run's state is gone


def test_a_finished_job_stays_done_when_another_run_writes_the_folder(root, cifar_npz):
    from cifar_dash import train

    rec = jobs.start("mlp", epochs=1, limit=300, data_path=str(cifar_npz))
    assert jobs.wait("mlp", timeout=240).state == "done"
    jobs._POPEN[rec["pid"]].wait(timeout=60)
    work = artifacts.work_dir("mlp", root / "mlp")
    for other in ({"state": "running", "pid": 999_999_999}, {"state": "failed", "pid": 999_999_998, "message": "x"}):
        artifacts.write_json(work / train.PROGRESS, {"stage": "mlp", "updated": 0, **other})  # a later run, elsewhere
        st = jobs._job_status("mlp")
        assert st.state == "done" and st.progress["pid"] == rec["pid"], (st.state, st.message)
