"""Runs as records (runs.py): listing, promotion and its undo, deletion, damage, a promotion killed part way, and
the run bookkeeping importable without Keras."""

import json
import os
import subprocess
import sys
import time

import pytest

from cifar_dash import artifacts, publish, runs, train
from tests.conftest import ROOT


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, cifar_npz):
    """A stage folder with a published run (A, 2 epochs) and a second finished run (B, 1 epoch) beside it; tests
    copy it, so each starts from the same state."""
    from tests.conftest import train_and_publish

    base = tmp_path_factory.mktemp("runs") / "mlp"
    old = os.environ.get("CIFAR_DASH_CACHE")
    os.environ["CIFAR_DASH_CACHE"] = str(base.parent / "cache")
    try:
        a = train_and_publish("mlp", base, epochs=2, limit=200, data_path=cifar_npz)
        b = train.train("mlp", epochs=1, limit=200, data_path=cifar_npz, out_dir=base)
    finally:
        os.environ.pop("CIFAR_DASH_CACHE") if old is None else os.environ.update(CIFAR_DASH_CACHE=old)
    return base, a.name, b.name


@pytest.fixture
def stage(two_runs, tmp_path):
    import shutil

    base, a, b = two_runs
    out = tmp_path / "mlp"
    shutil.copytree(base, out)
    return out, a, b


def test_runs_are_listed_with_the_published_one_marked(stage):
    out, a, b = stage
    listed = runs.list_runs("mlp", where=out)
    assert [(r.run_id, r.state, r.published) for r in listed] == [(a, "finished", True), (b, "finished", False)]
    row = listed[1].row()
    assert row["epochs"] == 1 and 0 <= row["test accuracy"] <= 1 and row["train seconds"] > 0 and row["machine"]
    assert json.loads((out / "train_info.json").read_text())["run_id"] == a


def test_promote_and_undo(stage):
    out, a, b = stage
    published_a = _files(out)
    done = publish.promote("mlp", b, where=out)
    assert done["promoted"] == b and done["replaced"] == a
    assert done["new_accuracy"] == json.loads((out / "runs" / b / "metrics.json").read_text())["test_accuracy"]
    assert done["old_accuracy"] == json.loads(published_a["metrics.json"])["test_accuracy"]
    for name in runs.PUBLISHED:  # the published files are now B's, byte for byte
        assert (out / name).read_bytes() == (out / "runs" / b / name).read_bytes()
    from cifar_dash import results

    assert results.load_folder("mlp", out).status == "trained"
    assert [r.run_id for r in runs.list_runs("mlp", where=out) if r.published] == [b]
    publish.promote("mlp", a, where=out)  # undo: promote the replaced run back
    assert {k: v for k, v in _files(out).items() if k in runs.PUBLISHED} == {
        k: v for k, v in published_a.items() if k in runs.PUBLISHED
    }
    with pytest.raises(runs.RunError, match="already the published one"):
        publish.promote("mlp", a, where=out)
    assert not (out / "runs" / ".lock").exists()  # the lock is gone once the promotion is over


def test_the_stage_lock_excludes_a_second_holder_and_leaves_no_file(tmp_path):
    import threading

    order = []

    def second():
        with publish.stage_lock("mlp", where=tmp_path):
            order.append("2")

    with publish.stage_lock("mlp", where=tmp_path):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("1")  # the second holder is still waiting
    t.join(5)
    assert order == ["1", "2"] and not (tmp_path / "runs" / ".lock").exists()


def test_a_published_run_without_a_folder_is_kept_as_a_run_when_replaced(stage):
    """As a fresh clone has it: the published files are committed, its run folder is not (runs/ is git-ignored)."""
    import shutil

    out, a, b = stage
    shutil.rmtree(out / "runs" / a)
    listed = runs.list_runs("mlp", where=out)
    assert [(r.run_id, r.folder, r.published) for r in listed][0] == (a, None, True)
    before = _files(out)
    publish.promote("mlp", b, where=out)
    kept = out / "runs" / a
    # the published files and what was measured on that model (its validation predictions) leave with it
    assert {k: v for k, v in _files(kept).items()} == {
        k: v for k, v in before.items() if k in runs.PUBLISHED + runs.OPTIONAL
    }
    publish.promote("mlp", a, where=out)
    assert {k: v for k, v in _files(out).items() if k in runs.PUBLISHED} == {
        k: v for k, v in before.items() if k in runs.PUBLISHED
    }


def test_robustness_of_the_old_model_leaves_with_it(stage):
    out, a, b = stage
    (out / artifacts.ROBUSTNESS).write_text('{"measured on": "A"}')
    publish.promote("mlp", b, where=out)
    assert not (out / artifacts.ROBUSTNESS).exists()
    assert (out / "runs" / a / artifacts.ROBUSTNESS).read_text() == '{"measured on": "A"}'
    publish.promote("mlp", a, where=out)
    assert (out / artifacts.ROBUSTNESS).read_text() == '{"measured on": "A"}'


def test_what_cannot_be_promoted_or_deleted_is_refused_with_a_reason(stage):
    out, a, b = stage
    before = _files(out)
    with pytest.raises(runs.RunError, match="has no run 'nope'"):
        publish.promote("mlp", "nope", where=out)
    with pytest.raises(runs.RunError, match="is not a run id"):
        runs.run_dir("mlp", "../escape", where=out)
    with pytest.raises(runs.RunError, match="is the published model"):
        publish.delete("mlp", a, where=out)
    (out / "runs" / b / "metrics.json").write_text("{ not json")
    listed = {r.run_id: r for r in runs.list_runs("mlp", where=out)}
    assert listed[b].state == "damaged" and "corrupt" in listed[b].problem
    with pytest.raises(runs.RunError, match="is damaged"):
        publish.promote("mlp", b, where=out)
    (out / "runs" / b / "model.keras").write_bytes(b"truncated")
    (out / "runs" / b / "metrics.json").write_bytes((out / "metrics.json").read_bytes())
    assert {r.run_id: r for r in runs.list_runs("mlp", where=out)}[b].state == "damaged"
    (out / "runs" / b / "train_info.json").write_text("[1, 2]")
    assert "not an object" in {r.run_id: r for r in runs.list_runs("mlp", where=out)}[b].problem
    assert _files(out) == before
    publish.delete("mlp", b, where=out)  # a damaged run can be deleted
    assert [r.run_id for r in runs.list_runs("mlp", where=out)] == [a]


def test_a_run_still_training_cannot_be_promoted_or_deleted(stage):
    from tests.test_train import _fake_live_run

    out, a, b = stage
    proc = _fake_live_run(out / "runs" / b)
    try:
        assert {r.run_id: r.state for r in runs.list_runs("mlp", where=out)}[b] == "training"
        with pytest.raises(runs.RunError, match="still training"):
            publish.promote("mlp", b, where=out)
        with pytest.raises(runs.RunError, match="still training; cancel it first"):
            publish.delete("mlp", b, where=out)
    finally:
        proc.kill()
        proc.wait()


def test_a_promotion_killed_part_way_is_completed_by_the_next_call(stage, monkeypatch):
    """kill -9 after two of the five renames: the journal names what is left; the next listing finishes it, so
    the published folder ends whole (all B), never a mix."""
    out, a, b = stage
    real = os.replace
    moved = []

    def dies_after_two(src, dst):
        if "promote-" in str(src):
            if len(moved) == 2:
                raise SystemExit("killed")  # stands in for kill -9: nothing after this line runs
            moved.append(dst)
        return real(src, dst)

    monkeypatch.setattr(runs.os, "replace", dies_after_two)
    with pytest.raises(SystemExit):
        publish.promote("mlp", b, where=out)
    monkeypatch.setattr(runs.os, "replace", real)
    assert (out / runs.JOURNAL).exists()
    listed = runs.list_runs("mlp", where=out)  # any reader that lists runs completes it
    assert not (out / runs.JOURNAL).exists() and not list(out.glob(".promote-*"))
    assert [r.run_id for r in listed if r.published] == [b]
    for name in runs.PUBLISHED:
        assert (out / name).read_bytes() == (out / "runs" / b / name).read_bytes()


def test_a_promotion_killed_before_its_journal_leaves_the_published_run(stage, monkeypatch):
    out, a, b = stage
    before = _files(out)

    def dies(*args):
        raise SystemExit("killed")

    monkeypatch.setattr(publish, "write_json", dies)
    with pytest.raises(SystemExit):
        publish.promote("mlp", b, where=out)
    monkeypatch.undo()
    assert list(out.glob(".promote-*"))  # staged, never moved
    runs.list_runs("mlp", where=out)
    assert not list(out.glob(".promote-*")) and _files(out) == before


def test_the_cli_lists_promotes_and_deletes_without_importing_keras(stage, monkeypatch):
    out, a, b = stage
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CIFAR_DASH_CHECKPOINTS": str(out.parent)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "cifar_dash", *args], env=env, capture_output=True, text=True)

    r = cli("runs", "mlp")
    assert r.returncode == 0 and a in r.stdout and "finished (published)" in r.stdout and b in r.stdout
    r = cli("promote", "mlp", b)
    assert r.returncode == 0 and f"undo with: python -m cifar_dash promote mlp {a}" in r.stdout
    r = cli("delete-run", "mlp", b)
    assert r.returncode == 2 and "is the published model" in r.stderr
    r = cli("promote", "mlp", "missing")
    assert r.returncode == 2 and "has no run 'missing'" in r.stderr
    code = "import sys; import cifar_dash.runs, cifar_dash.jobs, cifar_dash.cli; print('keras' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "False"


def test_compare_two_runs(stage):
    out, a, b = stage
    listed = {r.run_id: r for r in runs.list_runs("mlp", where=out)}
    d = runs.compare(listed[a], listed[b])
    acc_a, acc_b, change = d["test_accuracy"]
    assert change == pytest.approx(acc_b - acc_a) and d["epochs"] == (2, 1)
    assert len(d["per_class"]) == 10 and all(r["change"] == pytest.approx(r["b"] - r["a"]) for r in d["per_class"])
    assert [h["epoch"] for h in listed[a].history()] == [1, 2]


def test_run_ids_sort_by_time_and_are_unique(monkeypatch):
    import datetime

    moments = iter(datetime.datetime(2026, m, d, h, tzinfo=datetime.UTC) for m, d, h in [(12, 7, 9), (1, 2, 3), (12, 7, 8)])

    class Clock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return next(moments)

    monkeypatch.setattr(runs.datetime, "datetime", Clock)
    made = [runs.new_run_id() for _ in range(3)]
    monkeypatch.undo()
    assert sorted(made) == [made[1], made[2], made[0]]  # the string order is the time order
    ids = {runs.new_run_id() for _ in range(50)}  # fifty in the same second
    assert len(ids) > 45 and all(runs.valid_run_id(i) for i in ids)
    assert not runs.valid_run_id("") and not runs.valid_run_id("-x") and not runs.valid_run_id("a/b")


def test_resume_finds_the_runs_the_listing_calls_interrupted_without_reading_their_results(stage):
    """runs.interrupted_folders (what `train --resume` picks from) agrees with list_runs' resumable runs, oldest
    first, over every state a run folder can be in."""
    import shutil

    out, a, b = stage
    root = out / "runs"

    def variant(name, started, edit_info=None, progress=None, drop=()):
        d = root / name
        shutil.copytree(root / b, d)
        info = json.loads((d / "train_info.json").read_text())
        info.update(run_id=name, started=started, **(edit_info or {}))
        (d / "train_info.json").write_text(json.dumps(info))
        if progress:
            (d / "progress.json").write_text(json.dumps({"state": progress, "pid": 0}))
        for f in drop:
            (d / f).unlink()
        return d

    now = time.time()
    variant("x-not-evaluated", now + 3, drop=["metrics.json"])
    variant("x-cancelled", now + 1, edit_info={"finished": None}, progress="cancelled")
    variant("x-failed", now + 2, edit_info={"finished": None}, progress="failed")
    variant("x-no-record", now + 4, drop=["train_info.json"])
    variant("x-killed", now + 5, edit_info={"finished": None})
    (variant("x-damaged-record", now + 6) / "train_info.json").write_text("[1, 2]")
    listed = [r.folder for r in runs.list_runs("mlp", where=out) if r.resumable]
    assert [d.name for d in listed] == ["x-cancelled", "x-not-evaluated", "x-killed"]
    assert runs.interrupted_folders("mlp", where=out) == listed


def test_a_continuation_reads_the_finished_run_its_value_names(stage, tmp_path):
    """ "published" is the stage folder (run A), a run id its run folder (B), anything else a folder; each with its
    train_info, history and its own measured accuracy. A folder that holds no finished run is refused by name, and
    a metrics.json of another run gives no accuracy."""
    out, a, b = stage
    published = runs.finished_run("published", "mlp", out)
    assert published.folder == out and published.info["run_id"] == a and len(published.history) == 2
    assert published.test_accuracy == json.loads((out / "metrics.json").read_text())["test_accuracy"]
    by_id = runs.finished_run(b, "mlp", out)
    assert by_id.folder == out / "runs" / b and by_id.info["run_id"] == b and len(by_id.history) == 1
    assert runs.finished_run(str(out / "runs" / b), "mlp", tmp_path / "elsewhere").info["run_id"] == b  # a folder
    metrics = json.loads((out / "runs" / b / "metrics.json").read_text())
    (out / "runs" / b / "metrics.json").write_text(json.dumps({**metrics, "run_id": a}))
    assert runs.finished_run(b, "mlp", out).test_accuracy is None
    with pytest.raises(runs.RunError, match="holds no finished run to continue"):
        runs.finished_run(tmp_path / "nothing", "mlp", out)
    (out / "runs" / b / "history.json").write_text("{")
    with pytest.raises(runs.RunError, match="holds no finished run to continue"):
        runs.finished_run(b, "mlp", out)
