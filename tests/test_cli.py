import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _run(*args, root=None):
    # the test's own cache (set per test by conftest), so a failed run's progress never lands in the user's cache
    env = {**ENV, "CIFAR_DASH_CACHE": os.environ["CIFAR_DASH_CACHE"]}
    if root:
        env["CIFAR_DASH_CHECKPOINTS"] = str(root)
    return subprocess.run(
        [sys.executable, "-m", "cifar_dash", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_stages_lists_all_with_measured(trained_root):
    r = _run("stages", root=trained_root)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    from cifar_dash import stages

    assert len(lines) == 1 + len(stages.STAGES)
    mlp = next(line for line in lines if line.startswith("mlp "))
    assert "46.19%" in mlp and "trained" in mlp
    assert "untrained" in next(line for line in lines if line.startswith("vgg_aug"))


def test_predict_prints_top3_per_stage(trained_root, tmp_path):
    img = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (220, 30, 30)).save(img)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    r = _run("predict", str(img), str(bad), root=trained_root)
    assert r.returncode == 1  # one file was bad
    assert "bad.png: " in r.stderr and "empty" in r.stderr
    assert "not calibrated" not in r.stderr or "calibrate" in r.stderr  # an uncalibrated stage says how
    out = r.stdout.splitlines()
    assert out[0].endswith("red.png") and out[1].startswith("  summary: ")
    rows = [line for line in out[2:] if line.startswith("  ") and line.split()[0] in ("mlp", "deep_mlp", "cnn")]
    assert [row.split()[0] for row in rows] == ["mlp", "deep_mlp", "cnn"]
    assert all(row.count("%") == 3 for row in rows)


def test_predict_checks_its_inputs_before_loading_any_model(tmp_path):
    r = _run("predict", str(tmp_path / "nonexistent.png"), root=tmp_path / "no-checkpoints")
    assert r.returncode == 1 and "nonexistent.png" in r.stderr and "No such file" in r.stderr
    assert r.stderr.count("\n") == 1  # one line: no TensorFlow start-up logging before it


def test_predict_json_with_an_unreadable_file_and_a_damaged_stage(detector_root, tmp_path):
    """Each readable image gets every stage's calibrated probabilities, the weighted summary and the detector's flag
    and score; a damaged stage is reported in its place while the others answer; an unreadable file is listed."""
    import shutil

    from cifar_dash import answers, calibration, images, ood, predict, results
    from cifar_dash.data import CLASS_NAMES

    root = tmp_path / "ck"
    shutil.copytree(detector_root, root)
    (root / "deep_mlp" / "model.keras").write_bytes(b"not a zip")
    img = tmp_path / "green.png"
    Image.new("RGB", (48, 40), (20, 200, 40)).save(img)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    r = _run("predict", "--json", str(img), str(tmp_path / "broken.jpg"), root=root)
    assert r.returncode == 1, r.stderr  # one file could not be read
    rows = json.loads(r.stdout)
    good, broken = rows
    assert broken["file"].endswith("broken.jpg") and broken["error"]
    assert good["file"].endswith("green.png")
    assert "damaged" in good["stages"]["deep_mlp"]["error"]
    assert set(good["stages"]) == {"mlp", "deep_mlp", "cnn", ood.STAGE}
    # cnn's numbers, recomputed here: the raw probabilities scaled by its stored temperature
    arr = images.to_model_input(img.read_bytes())
    cnn = results.load_result("cnn", root)
    raw = predict.predict(predict.load_stage("cnn", root), arr[None])[0]
    scaled = calibration.scale(raw[None], cnn.metrics["calibration"]["temperature"])[0]
    got = good["stages"]["cnn"]["probabilities"]
    assert [got[c] for c in CLASS_NAMES] == pytest.approx(scaled.tolist(), abs=1e-5)
    assert good["stages"]["cnn"]["top"] == max(got, key=got.get)
    assert good["summary"]["class"] in got and 0 < good["summary"]["probability"] <= 1
    det = ood.load(root)
    assert isinstance(good["none_of_these"], bool) and good["ood_threshold"] == pytest.approx(det.threshold)
    assert good["none_of_these"] == (good["ood_score"] > det.threshold)
    assert answers.answer({}, {})["summary"] is None


def test_bad_data_path_is_a_clear_error(tmp_path):
    r = _run("train", "mlp", "--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "missing.npz: no such file" in r.stderr


def test_continue_from_a_folder_without_a_run_is_a_clear_error(cifar_npz, tmp_path):
    r = _run(
        "train",
        "mlp",
        "--epochs",
        "3",
        "--data",
        str(cifar_npz),
        "--continue-from",
        str(tmp_path / "empty"),
        "--out",
        str(tmp_path / "o"),
    )
    assert r.returncode == 2 and "holds no finished run to continue" in r.stderr, r.stderr[-500:]


def test_results_table_from_metrics(trained_root):
    r = _run("results-table", root=trained_root)
    assert r.returncode == 0
    assert "| `mlp` | 46.19% |" in r.stdout and "| `resnet50v2` | 93.90% | untrained |" in r.stdout
    assert "smoke run on 400 images" in r.stdout  # the fixture runs used --limit 400
    _ = io  # keep import for image helpers


def test_readme_and_docs_figures_are_generated_from_the_shipped_artifacts(monkeypatch):
    from cifar_dash import docs

    monkeypatch.delenv("CIFAR_DASH_CHECKPOINTS", raising=False)
    assert docs.update(ROOT / "checkpoints", check=True) == [], "run `python -m cifar_dash docs`"
    readme = (ROOT / "README.md").read_text()
    for key in ("mlp", "speedrun", "resnet50v2_sota"):  # the measured figure of each stage is in README's table
        acc = json.loads((ROOT / "checkpoints" / key / "metrics.json").read_text())["test_accuracy"]
        assert f"| `{key}` |" in readme and f"**{100 * acc:.2f}%**" in readme


def test_docs_check_finds_a_hand_edited_figure(tmp_path, monkeypatch):
    from cifar_dash import docs, results

    text = "x\n<!-- generated:results -->\n| typed by hand |\n<!-- /generated:results -->\ny\n"
    out = docs.render(text, results.load_all(ROOT / "checkpoints"))
    assert out != text and "typed by hand" not in out and out.startswith("x\n") and out.endswith("y\n")
    assert docs.render(out, results.load_all(ROOT / "checkpoints")) == out
    with pytest.raises(ValueError, match="unknown generated block 'nope'"):
        docs.render("<!-- generated:nope -->\n<!-- /generated:nope -->", [])


def _readme_block(heading: str) -> list[str]:
    """The lines of the first ```bash block under a README heading."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split(f"\n## {heading}\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_readmes_own_commands():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    (setup,) = _readme_block("Set up and run the app")
    # the set-up steps, in order, without the final `streamlit run` (CI does not serve the app)
    steps = [part.strip() for part in setup.split("&&")]
    assert steps[-1].startswith(".venv/bin/streamlit run app.py")
    for step in steps[:-1]:
        assert step in ci, f"CI does not run README's set-up step {step!r}"
    tests = _readme_block("Run the tests")
    assert tests and all(cmd in ci for cmd in tests), f"CI does not run README's test command {tests}"
    assert ci.index(steps[0]) < ci.index(tests[0])


def test_seeds_summary_mean_and_std_by_hand(tmp_path):
    import json

    import pytest

    from cifar_dash import report

    folders = []
    for seed, acc in ((0, 0.90), (1, 0.92), (2, 0.94)):
        f = tmp_path / f"seed{seed}"
        f.mkdir()
        (f / "metrics.json").write_text(
            json.dumps(
                {
                    "stage": "speedrun",
                    "test_accuracy": acc,
                    "n_test": 10000,
                    "train_seconds": 100 + seed,
                    "recipe": {"seed": seed},
                }
            )
        )
        folders.append(f)
    s = report.seeds_summary("speedrun", folders)
    assert s["n_runs"] == 3 and s["mean_test_accuracy"] == pytest.approx(0.92)
    assert s["std_test_accuracy"] == pytest.approx(0.02)  # sample std of 0.90, 0.92, 0.94
    assert s["mean_train_seconds"] == pytest.approx(101)
    with pytest.raises(ValueError, match="share a seed"):
        report.seeds_summary("speedrun", [folders[0], folders[0]])
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text(
        json.dumps(
            {"stage": "speedrun", "test_accuracy": 0.5, "n_test": 10000, "recipe": {"seed": 3, "label_smoothing": 0.2}}
        )
    )
    with pytest.raises(ValueError, match="differs in label_smoothing"):
        report.seeds_summary("speedrun", [folders[0], other])
    # a run written before a Recipe field existed pools with one that stores that field at its default
    (other / "metrics.json").write_text(
        json.dumps(
            {
                "stage": "speedrun",
                "test_accuracy": 0.5,
                "n_test": 10000,
                "recipe": {"seed": 3, "label_smoothing": 0.0, "norm_bias_lr_scale": 1.0},
            }
        )
    )
    assert report.seeds_summary("speedrun", [folders[0], other])["n_runs"] == 2


def test_bad_numbers_are_refused_by_the_parser(tmp_path, capsys):
    from cifar_dash import cli

    for args, says in [
        (("train", "mlp", "--limit", "-5"), "must be 1 or more"),
        (("train", "mlp", "--limit", "0"), "must be 1 or more"),
        (("train", "mlp", "--epochs", "0"), "epochs must be positive"),
        (("train", "mlp", "--save-every", "-1"), "must be 1 or more"),
        (("train", "mlp", "--batch-size", "0"), "must be 1 or more"),
        (("train", "mlp", "--seed", "x"), "is not a whole number"),
        (("evaluate", "mlp", "--limit", "-1"), "must be 1 or more"),
        (("robustness", "mlp", "--limit", "-1"), "must be 0 or more"),
    ]:
        with pytest.raises(SystemExit) as e:  # argparse refuses before anything is loaded or trained
            cli.main([*args, "--out", str(tmp_path / "never")] if args[0] != "robustness" else list(args))
        err = capsys.readouterr().err
        assert e.value.code == 2 and says in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "never").exists()


def test_out_of_memory_is_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch):
    from cifar_dash import cli, failures, train

    def out_of_memory(*args, **kwargs):
        raise failures.OutOfMemory("mlp ran out of memory on cpu:0 while training (batch size 128): --batch-size 64")

    monkeypatch.setattr(train, "train", out_of_memory)
    assert cli.main(["train", "mlp", "--out", str(tmp_path / "mlp")]) == 2
    err = capsys.readouterr().err
    assert err == "error: mlp ran out of memory on cpu:0 while training (batch size 128): --batch-size 64\n"


def test_an_unwritable_out_is_refused_before_training(cifar_npz, tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    r = _run("train", "mlp", "--epochs", "1", "--limit", "300", "--data", str(cifar_npz), "--out", str(blocker / "mlp"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: cannot write into {blocker / 'mlp'}")
    assert "choose another --out" in r.stderr and "epoch" not in r.stdout


def test_stages_lists_a_damaged_stage_with_its_reason(trained_root, tmp_path):
    import shutil

    root = tmp_path / "ck"
    shutil.copytree(trained_root, root)
    model = root / "cnn" / "model.keras"
    model.write_bytes(model.read_bytes()[:1000])
    r = _run("stages", root=root)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("cnn "))
    assert "damaged" in line and "not a whole .keras archive" in line
    assert "trained" in next(x for x in r.stdout.splitlines() if x.startswith("mlp "))
    from tests.conftest import rename_a_layer_class

    rename_a_layer_class(root / "deep_mlp" / "model.keras")  # whole, but loading would refuse it
    r = _run("stages", root=root)
    line = next(x for x in r.stdout.splitlines() if x.startswith("deep_mlp "))
    assert "damaged" in line and "keras.layers.DenseThatDoesNotExist" in line
