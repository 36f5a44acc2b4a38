"""The benchmark scripts run and print (or write) their figures: a short run of each on tiny settings."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _run(args, env=None, timeout=300):
    r = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.slow
def test_bench_training_prints_and_writes_throughput(tmp_path):
    out = tmp_path / "bench.json"
    text = _run(
        ["benchmarks/bench_training.py", "--stages", "mlp", "--precisions", "float32", "--steps", "2", "--json", str(out)]
    )
    doc = json.loads(out.read_text())
    rows = doc["rows"] if isinstance(doc, dict) else doc
    assert len(rows) == 1 and rows[0]["stage"] == "mlp" and rows[0]["images_per_second"] > 0
    assert "mlp" in text and re.search(r"\d", text)


@pytest.mark.slow
def test_bench_accelerator_prints_and_writes_the_three_rates(tmp_path):
    # a stage that fails (here: no such stage) is reported and the others' rows are kept; --out may be a folder
    r = subprocess.run(
        [sys.executable, "benchmarks/bench_accelerator.py", "--stages", "mlp", "nope", "--steps", "2", "--json"]
        + ["--out", str(tmp_path)],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 1 and "failed: nope" in r.stderr and "nope" in r.stdout
    text = r.stdout
    (out,) = tmp_path.glob("accelerator-*-*.json")
    doc = json.loads(out.read_text())
    assert out.name == f"accelerator-{doc['machine']['cpu'].lower().replace(' ', '-')}-{doc['machine']['backend']}.json"
    assert set(doc) >= {"machine", "versions", "rows"} and len(doc["rows"]) == 1
    row = doc["rows"][0]
    fields = {"stage", "device", "backend", "precision", "batch_size", "model_ips", "reference_ips", "pipeline_ips"}
    assert set(row) >= fields
    assert row["stage"] == "mlp" and min(row["model_ips"], row["reference_ips"], row["pipeline_ips"]) > 0
    assert row["memory"] == "host RSS" and 100 < row["model_step_peak_mb"] < 20000  # a CPU: the process's peak
    assert re.search(
        r"mlp .*model step .*reference .*\(ratio \d\.\d\d\), pipeline .*of the model step\), peak [\d,]+ MB \(host RSS\)",
        text,
    )


@pytest.mark.slow
def test_bench_app_times_every_page(trained_root, cifar_npz, tmp_path):
    text = _run(
        ["benchmarks/bench_app.py", "--reps", "1"],
        env={
            "CIFAR_DASH_CHECKPOINTS": str(trained_root),
            "CIFAR10_PATH": str(cifar_npz),
            "CIFAR_DASH_CACHE": str(tmp_path / "cache"),
        },
    )
    assert re.search(r"cold start .*: \d+\.\d+ s", text)
    for page in ("app.py", "pages/explorer.py", "pages/compare.py", "pages/predict.py", "pages/training.py"):
        assert re.search(rf"warm render {re.escape(page)} +\d+\.\d ms", text), page
    assert "loading 3 models" in text and re.search(r"peak RSS with all stages loaded: \d+ MB", text)
    assert re.search(r"upload of one photo to the finished page: cold \d+\.\d+ s, warm \d+\.\d+ s", text)
    assert re.search(r"draw 4 random test images, warm .*: median \d+\.\d+ s, max \d+\.\d+ s over 1 draw$", text, re.M)


@pytest.mark.slow
def test_ablation_script_writes_its_rows(cifar_npz, tmp_path):
    out = tmp_path / "ablations.json"
    _run(
        [
            "benchmarks/ablate_speedrun.py",
            "--variants",
            "full",
            "--epochs",
            "1",
            "--limit",
            "100",
            "--data",
            str(cifar_npz),
            "--json",
            str(out),
            "--runs-dir",
            str(tmp_path / "runs"),
        ],
        env={"CIFAR_DASH_CACHE": str(tmp_path / "cache")},
    )
    doc = json.loads(out.read_text())
    assert doc["protocol"] == {"epochs": 1, "limit": 100}
    assert [r["variant"] for r in doc["rows"]] == ["full"] and 0 <= doc["rows"][0]["test_accuracy"] <= 1
    assert doc["summary"][0]["variant"] == "full" and doc["summary"][0]["runs"] == 1


def test_ablation_summary_by_hand():
    """Two seeds of the full recipe and of one variant: means, sample deviations and the change in points."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablate_speedrun", ROOT / "benchmarks" / "ablate_speedrun.py")
    ablate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablate)
    rows = [
        {"variant": "full", "test_accuracy": 0.94, "train_seconds": 100.0},
        {"variant": "full", "test_accuracy": 0.92, "train_seconds": 110.0},
        {"variant": "no_lookahead", "test_accuracy": 0.90, "train_seconds": 90.0},
        {"variant": "no_lookahead", "test_accuracy": 0.89, "train_seconds": 80.0},
    ]
    out = {r["variant"]: r for r in ablate.summary(rows)}
    assert out["full"]["mean_accuracy"] == pytest.approx(0.93) and out["full"]["vs_full_points"] == 0.0
    assert out["full"]["std"] == pytest.approx(0.01414, abs=1e-5)  # sample deviation of 0.94 and 0.92
    assert out["no_lookahead"]["vs_full_points"] == pytest.approx(-3.5)  # (0.895 - 0.93) * 100
    assert out["no_lookahead"]["mean_train_seconds"] == 85.0 and out["no_lookahead"]["runs"] == 2


def _gpu_check(steps, tmp_path, carried):
    env = {**ENV, "OUT": str(tmp_path / "out"), "GPU_CHECK_DATA": str(tmp_path / "kept"),
           "GPU_CHECK_RUNS": str(tmp_path / "runs"), "GPU_CHECK_CARRIED": str(carried)}  # fmt: skip
    return subprocess.run(["bash", "benchmarks/gpu_check.sh", *steps], cwd=ROOT, env=env, capture_output=True, text=True)


def test_gpu_check_keeps_parts_between_calls_and_joins_them_checked(tmp_path):
    """The data set travels to the GPU machine in parts, one a call (benchmarks/gpu_prepare.sh): each call keeps its
    part, the last joins them and checks the whole file's sha256; a missing or damaged part is refused."""
    import hashlib

    payload = os.urandom(30_000)
    parts = [payload[:10_000], payload[10_000:20_000], payload[20_000:]]
    sha = f"{hashlib.sha256(payload).hexdigest()}  cifar10.npz\n"
    for i, part in enumerate(parts):  # call i carries part i (and the checksum)
        carried = tmp_path / f"call{i}"
        carried.mkdir()
        (carried / f"cifar10.npz.part0{i}").write_bytes(part)
        (carried / "cifar10.npz.sha256").write_text(sha)
    r = _gpu_check(["stash"], tmp_path, tmp_path / "call0")
    assert r.returncode == 0, r.stdout
    r = _gpu_check(["data"], tmp_path, tmp_path / "call1")  # one part still missing
    assert r.returncode == 1 and "incomplete or damaged" in r.stdout and "data FAILED" in r.stdout
    r = _gpu_check(["data"], tmp_path, tmp_path / "call2")
    assert r.returncode == 0, r.stdout
    assert (tmp_path / "kept" / "cifar10.npz").read_bytes() == payload
    assert "data done" in (tmp_path / "out" / "gpu_check.log").read_text()

    (tmp_path / "kept" / "cifar10.npz.part01").write_bytes(b"x" + parts[1][1:])  # one damaged byte
    r = _gpu_check(["data"], tmp_path, tmp_path / "call2")
    assert r.returncode == 1 and "incomplete or damaged" in r.stdout


def test_gpu_check_refuses_an_unknown_step_before_running_any(tmp_path):
    r = _gpu_check(["stash", "warp"], tmp_path, tmp_path)
    assert r.returncode == 2 and "unknown step 'warp'" in r.stdout and not (tmp_path / "out" / "gpu_check.log").exists()


@pytest.mark.slow  # loads a shipped MobileNetV2 and compiles its forward pass with XLA (about 20 s)
def test_xla_bilinear_prints_and_writes_the_probe_and_both_accuracies(cifar_npz, tmp_path):
    out = tmp_path / "xla.json"
    text = _run(
        ["benchmarks/xla_bilinear.py", "--stages", "mobilenetv2_frozen", "--n", "32", "--data", str(cifar_npz)]
        + ["--json", str(out)],
        env={"KERAS_BACKEND": "tensorflow"},
    )
    doc = json.loads(out.read_text())
    row = doc["stages"]["mobilenetv2_frozen"]
    assert doc["n_test"] == 32 and doc["probe_grey_levels"] >= 0 and doc["runtime"]["backend"] == "tensorflow"
    assert 0 <= row["accuracy_eager"] <= 1 and 0 <= row["accuracy_xla"] <= 1 and row["max_probability_difference"] >= 0
    assert f"{doc['probe_grey_levels']:.1f} grey levels off" in text and "mobilenetv2_frozen: " in text
