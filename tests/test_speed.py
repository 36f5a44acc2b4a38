"""Precision and XLA per machine: the rule, a kept measurement that replaces it, and train's choice."""

import json
import os
import subprocess
import sys

import pytest

from cifar_dash import speed, stages
from tests.conftest import ROOT

AMX = {"cpu": "Intel Xeon", "cpu_isa": "AMX", "cpu_count": 2, "gpu": None, "backend": "tensorflow", "versions": {}}
AVX2 = {**AMX, "cpu": "AMD EPYC", "cpu_isa": "AVX2"}
GPU = {**AMX, "gpu": "NVIDIA H200", "backend": "jax"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_DASH_CACHE", str(tmp_path))
    return tmp_path


def test_the_rule_takes_bfloat16_without_xla_only_on_cpus_that_have_it():
    recipe = stages.get("speedrun").recipe
    assert recipe.jit_compile and not recipe.mixed_precision
    assert speed.rule(recipe, AMX)[:2] == ("mixed_bfloat16", False)
    assert speed.rule(recipe, {**AMX, "cpu_isa": "AVX-512 BF16"})[:2] == ("mixed_bfloat16", False)
    assert speed.rule(recipe, AVX2) == speed.of_recipe(recipe) == ("float32", True, "recipe")
    assert speed.rule(recipe, {**AVX2, "cpu_isa": "AVX-512"}).source == "recipe"
    assert speed.rule(recipe, GPU).source == "recipe"  # a GPU: the recipe's own (--mixed-precision asks for bf16)
    assert speed.rule(stages.get("cnn").recipe, AVX2)[:2] == ("float32", False)


def test_a_kept_measurement_replaces_the_rule_for_its_machine_and_stage_only(cache):
    recipe = stages.get("speedrun").recipe
    record = {"date": "2026-12-04", "chosen": {"precision": "float32", "xla": False}, "rows": []}
    path = speed.write_record(AMX, "speedrun", record)
    assert path.parent == cache and json.loads(path.read_text())["stages"]["speedrun"] == record
    chosen = speed.choose("speedrun", recipe, AMX)
    assert chosen[:2] == ("float32", False) and chosen.source.startswith("measured on 2026-12-04")
    assert speed.choose("cnn", stages.get("cnn").recipe, AMX).source.startswith("rule")  # another stage: no record
    assert speed.choose("speedrun", recipe, AVX2).source == "recipe"  # another machine: no record
    other_versions = {**AMX, "versions": {"keras": "9"}}
    assert speed.machine_key(other_versions) != speed.machine_key(AMX)
    assert speed.choose("speedrun", recipe, other_versions).source.startswith("rule")
    speed.write_record(AMX, "cnn", {**record, "chosen": {"precision": "float32", "xla": True}})
    assert set(json.loads(path.read_text())["stages"]) == {"speedrun", "cnn"}  # records add up


def test_an_unreadable_record_falls_back_to_the_rule(cache):
    speed.record_path(AMX).write_text("{not json")
    assert speed.choose("speedrun", stages.get("speedrun").recipe, AMX).source.startswith("rule")


def test_train_takes_what_is_asked_for_else_the_choice(cache, monkeypatch):
    recipe = stages.get("speedrun").recipe
    r, c = speed.setting("speedrun", recipe, "recipe", False, None)
    assert (r.mixed_precision, r.jit_compile, c.source) == (False, True, "recipe")
    r, c = speed.setting("speedrun", recipe, "auto", False, False)  # --xla off
    assert (r.mixed_precision, r.jit_compile, c.source) == (False, False, "asked for")
    r, c = speed.setting("speedrun", recipe, "auto", True, None)  # --mixed-precision
    assert (r.mixed_precision, r.jit_compile, c.source) == (True, True, "asked for")
    monkeypatch.setattr(speed.runtime, "info", lambda: AMX)
    r, c = speed.setting("speedrun", recipe, "auto", False, None)
    assert (r.mixed_precision, r.jit_compile) == (True, False) and c.source.startswith("rule")
    with pytest.raises(ValueError, match="speed must be"):
        speed.setting("speedrun", recipe, "fast", False, None)


@pytest.mark.slow  # times every precision and XLA setting (about 25 s); CI runs it with the slow checks
def test_tune_measures_every_setting_and_train_auto_uses_it(cifar_npz, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "CIFAR_DASH_CACHE": str(tmp_path)}
    env["CIFAR_DASH_SPEED"] = "auto"  # the CLI's own default (conftest sets "recipe" for the other tests)
    r = subprocess.run(
        [sys.executable, "-m", "cifar_dash", "tune", "mlp", "--steps", "2"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("images/s (median of ") == 4 and "fastest: " in r.stdout and "chosen: " in r.stdout
    (kept,) = tmp_path.glob("speed-*.json")
    record = json.loads(kept.read_text())["stages"]["mlp"]
    assert {(row["precision"], row["xla"]) for row in record["rows"]} == set(speed.SETTINGS)
    fastest = min(record["rows"], key=lambda row: row["step_seconds"])
    assert record["fastest"] == {"precision": fastest["precision"], "xla": fastest["xla"]}
    own = next(row for row in record["rows"] if row["precision"] == "float32" and not row["xla"])  # mlp's recipe
    best = own if own["step_seconds"] <= 1.10 * fastest["step_seconds"] else fastest
    assert record["chosen"] == {"precision": best["precision"], "xla": best["xla"]}
    assert all(row["steps"] == 2 or row["step_seconds"] > 2 * fastest["step_seconds"] for row in record["rows"])
    out = tmp_path / "mlp"
    cmd = [sys.executable, "-m", "cifar_dash", "train", "mlp", "--epochs", "1", "--limit", "100", "--no-evaluate"]
    r = subprocess.run(
        [*cmd, "--data", str(cifar_npz), "--out", str(out)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(measured on " in r.stderr
    (folder,) = (out / "runs").iterdir()
    info = json.loads((folder / "train_info.json").read_text())
    assert info["speed"]["source"].startswith("measured on") and info["speed"]["precision"] == best["precision"]
    assert info["recipe"]["jit_compile"] == best["xla"]


def test_the_pages_keras_free_machine_description_finds_the_record_train_finds():
    """The sidebar says what a run will use without importing Keras: its description of this machine keys
    the same measurement as train's."""
    from cifar_dash import runtime

    light, full = runtime.host_info(), runtime.info()
    assert (light["gpu"] is None) == (full["gpu"] is None)  # both see a GPU, or neither does
    assert {k: light[k] for k in ("cpu", "cpu_isa", "cpu_count", "backend")} == {
        k: full[k] for k in ("cpu", "cpu_isa", "cpu_count", "backend")
    }
    assert speed.machine_key(light) == speed.machine_key(full)
