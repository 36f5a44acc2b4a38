"""AppTest per page, on fixture checkpoints trained in the test session."""

import dataclasses
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from cifar_dash import analysis, claims, results, stages
from cifar_dash.data import CLASS_NAMES
from tests.conftest import ROOT

PAGES = ["pages/explorer.py", "pages/inside.py", "pages/compare.py", "pages/predict.py", "pages/training.py"]


@pytest.fixture
def app_env(trained_root, cifar_npz, monkeypatch):
    monkeypatch.setenv("CIFAR_DASH_CHECKPOINTS", str(trained_root))
    monkeypatch.setenv("CIFAR10_PATH", str(cifar_npz))
    return trained_root


def _app():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def _charts(at):
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _arr(v):
    """Plotly encodes numpy arrays as base64 typed arrays; decode them (plain lists pass through)."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(x) for x in str(v.get("shape", len(a))).split(",")])
    return np.asarray(v, dtype=float)


def _texts(at):
    return [m.value for m in at.markdown] + [c.value for c in at.caption]


def test_journey_growth_curve_has_reported_and_measured(app_env):
    at = _app()
    curve = _charts(at)[0]
    reported, measured = curve["data"][0], curve["data"][1]
    assert reported["y"][:3] == [46.19, 42.89, 70.71]
    mlp = json.loads((app_env / "mlp" / "metrics.json").read_text())
    assert measured["x"][0] == "mlp" and measured["y"][0] == pytest.approx(100 * mlp["test_accuracy"])
    assert measured["y"][3] is None  # vgg_aug is not trained in the fixture
    assert "Glorot" in reported["hovertext"][0]
    table = at.dataframe[0].value
    assert list(table["stage"][:3]) == ["mlp", "deep_mlp", "cnn"]
    assert table["measured %"][0] == pytest.approx(round(100 * mlp["test_accuracy"], 2))
    assert any("vgg_aug" in i.value and "not trained" in i.value for i in at.info)


def test_every_page_renders_with_zero_trained_stages(tmp_path, cifar_npz, monkeypatch):
    monkeypatch.setenv("CIFAR_DASH_CHECKPOINTS", str(tmp_path / "empty"))
    monkeypatch.setenv("CIFAR10_PATH", str(cifar_npz))
    at = _app()
    from cifar_dash import stages

    assert len([i for i in at.info if "not trained yet" in i.value]) == len(stages.STAGES)
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)


def test_one_corrupt_stage_shows_an_error_and_the_rest_work(trained_root, cifar_npz, tmp_path, monkeypatch):
    root = tmp_path / "ck"
    shutil.copytree(trained_root, root)
    (root / "cnn" / "metrics.json").write_text("{ not json")
    (root / "deep_mlp" / "test_predictions.npz").write_bytes(b"junk")
    monkeypatch.setenv("CIFAR_DASH_CHECKPOINTS", str(root))
    monkeypatch.setenv("CIFAR10_PATH", str(cifar_npz))
    at = _app()
    assert any("cnn" in e.value and "corrupt" in e.value for e in at.error)
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
    at.switch_page("pages/explorer.py").run()
    at.selectbox(key="explorer_stage").set_value("cnn").run()
    assert any("corrupt" in e.value for e in at.error)


def test_explorer_confusion_matrix_and_cell_gallery(app_env):
    at = _app()
    at.switch_page("pages/explorer.py").run()
    at.selectbox(key="explorer_stage").set_value("mlp").run()
    assert not at.exception
    assert any(
        c.value == "Differs from the stage's recipe: 3 of the recipe's 20 epochs; smoke run on 400 images."
        for c in at.caption
    )
    metrics = json.loads((app_env / "mlp" / "metrics.json").read_text())
    chart = next(c for c in _charts(at) if c["data"][0].get("type") == "heatmap")
    heat, grid = chart["data"]
    cells = {(y, x): int(t.replace(",", "")) for x, y, t in zip(grid["x"], grid["y"], grid["text"])}
    assert cells == {
        (CLASS_NAMES[i], CLASS_NAMES[j]): metrics["confusion_matrix"][i][j] for i in range(10) for j in range(10)
    }
    assert _arr(heat["z"]).tolist() == metrics["confusion_matrix"]  # the colours: the same counts, row by row
    preds = results.predictions("mlp")
    true_box = next(s for s in at.selectbox if s.label == "True class")
    pred_box = next(s for s in at.selectbox if s.label == "Predicted as")
    true_box.set_value(CLASS_NAMES[0])
    pred_box.set_value(CLASS_NAMES[0]).run()
    n = int(((preds.labels == 0) & (preds.predicted == 0)).sum())
    assert any(t.startswith(f"**{n}** test images of *airplane* predicted as *airplane*") for t in _texts(at))
    n_wrong = int((preds.labels != preds.predicted).sum())
    assert len(at.get("image")) == min(n, 32) + min(n_wrong, 24)  # the cell's gallery + most confident mistakes
    curves = [c for c in _charts(at) if c["data"][0].get("name") == "train accuracy"]
    assert _arr(curves[0]["data"][0]["y"]) == pytest.approx([h["accuracy"] for h in results.load_result("mlp").history])
    rate = next(c for c in _charts(at) if c["data"][0].get("name") == "learning rate")
    history = results.load_result("mlp").history
    assert _arr(rate["data"][0]["y"]) == pytest.approx([h["learning_rate"] for h in history])
    assert rate["layout"]["yaxis"]["type"] == "log"


def test_compare_counts_fixed_and_broken(app_env):
    at = _app()
    at.switch_page("pages/compare.py").run()
    at.selectbox(key="cmp_a").set_value("mlp")
    at.selectbox(key="cmp_b").set_value("cnn").run()
    assert not at.exception
    fb = analysis.fixed_and_broken(results.predictions("mlp"), results.predictions("cnn"))
    values = {m.label: m.value for m in at.metric}
    assert values["Fixed by the later stage"] == f"{len(fb['fixed']):,}"
    assert values["Broken by the later stage"] == f"{len(fb['broken']):,}"
    agreement = next(c for c in _charts(at) if c["data"][0]["type"] == "heatmap")
    assert agreement["data"][0]["x"] == ["mlp", "deep_mlp", "cnn"]
    z = _arr(agreement["data"][0]["z"])
    a, c = results.predictions("mlp"), results.predictions("cnn")  # same 200 test images, same order
    assert z[0, 2] == pytest.approx(float((a.predicted == c.predicted).mean()))


def test_predict_draws_test_images_one_prediction_per_stage(app_env):
    at = _app()
    at.switch_page("pages/predict.py").run()
    at.number_input(key="n_random").set_value(3)
    at.button(key="draw").click().run()
    assert not at.exception
    cells = [m for m in _texts(at) if "**" in m and "%" in m and (":green[right]" in m or ":red[wrong]" in m)]
    assert len(cells) == 3 * 3  # 3 images x 3 trained stages, one card each, named
    assert sum(c.startswith("**CNN**  \n") for c in cells) == 3
    assert sum("stages agree" in t or "Stages disagree" in t for t in _texts(at)) == 3
    at.toggle(key="details").set_value(True).run()
    assert not at.exception
    from cifar_dash import answers, predict

    x_test = np.load(os.environ["CIFAR10_PATH"])["x_test"]
    first = at.session_state["drawn"][0]
    raw = predict.predict(predict.load_stage("cnn"), x_test[first][None])
    probs, temperature = answers.calibrated(raw, results.load_result("cnn").metrics)  # the card shows scaled ones
    assert temperature is not None
    expected = " · ".join(f"{c} {q:.0%}" for c, q in predict.top_k(probs, 3)[0])
    cnn_cards = [m.value for m in at.markdown if m.value.startswith("**CNN**")]
    assert f":gray[{expected}]" in cnn_cards[0]  # cnn's top-3 on its card for the first drawn image


def _predicted_total(keys=("mlp", "deep_mlp", "cnn")) -> int:
    return sum(c.predicted.get(k, 0) for c in _prediction_caches() for k in keys)


def test_drawn_test_images_are_answered_from_the_stored_predictions(checkpoints_copy):
    """No model runs for a test image: each stage's card shows its evaluation's stored answer, calibrated; a stage
    evaluated on another test set (fingerprint differs) runs its model instead."""
    metrics = checkpoints_copy / "cnn" / "metrics.json"
    m = json.loads(metrics.read_text())
    metrics.write_text(json.dumps({**m, "test_data_fingerprint": "0" * 64}))  # cnn: "evaluated elsewhere"
    at = _app()
    at.switch_page("pages/predict.py").run()
    at.number_input(key="n_random").set_value(4)
    before = {k: _predicted_total((k,)) for k in ("mlp", "deep_mlp", "cnn")}
    at.button(key="draw").click().run()
    assert not at.exception
    ran = {k: _predicted_total((k,)) - before[k] for k in before}
    assert ran == {"mlp": 0, "deep_mlp": 0, "cnn": 4}
    assert any("stored evaluation predictions" in c.value for c in at.caption)
    from cifar_dash import answers

    stored = results.predictions("mlp")
    row = {int(i): k for k, i in enumerate(stored.indices)}
    probs, _ = answers.calibrated(stored.probs, results.load_result("mlp").metrics)
    mlp_cards = [m.value for m in at.markdown if m.value.startswith("**MLP**")]
    for card, i in zip(mlp_cards, at.session_state["drawn"]):
        top = int(probs[row[i]].argmax())
        assert card.startswith(f"**MLP**  \n{CLASS_NAMES[top]} · {probs[row[i]][top]:.0%}")


def test_training_page_and_sidebar_render(app_env):
    from cifar_dash import runs
    from tests.test_train import _fake_live_run

    at = _app()
    assert at.button(key="train_start").label == "Start training"
    assert at.selectbox(key="train_stage").value == "mlp"
    assert any("never replaces the published model" in c.value for c in at.caption)
    folder = runs.runs_root("cnn") / "20260101-000000-abcd"
    proc = _fake_live_run(folder)  # a run started in a terminal
    try:
        at.switch_page("pages/training.py").run()
        assert not at.exception
        assert at.button(key="train_start").label == "Start training"  # the sidebar is on every page
        table = at.dataframe[0].value
        assert list(table["stage"]) == [
            "mlp",
            "deep_mlp",
            "cnn",
            "vgg_aug",
            "mobilenetv2_frozen",
            "mobilenetv2_finetune",
            "resnet50v2",
            "resnet50v2_sota",
            "speedrun",
        ]
        row = table[table["stage"] == "cnn"].iloc[0]
        assert row["state"] == "running" and row["started"] == "outside the dashboard" and row["epoch"] == "2/5"
        assert any(f"started outside the dashboard (pid {proc.pid})" in c.value for c in at.caption)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(folder.parent)


def test_journey_states_each_seed_claim_with_a_verdict(app_env):
    at = _app()
    verdicts = [
        t for t in _texts(at) if any(f"— *{v}*" in t for v in ("supported", "contradicted", "within noise", "not measured"))
    ]
    assert len(verdicts) == len(claims.CHECKS)
    assert any("deep_mlp (2,366,474 parameters)" in t for t in verdicts)
    calib = next(c for c in _charts(at) if any(d.get("name") == "ECE" for d in c["data"]))
    ece = next(d for d in calib["data"] if d["name"] == "ECE")
    mlp = json.loads((app_env / "mlp" / "metrics.json").read_text())
    assert _arr(ece["y"])[0] == pytest.approx(mlp["calibration"]["ece"])


def test_predict_shows_one_saliency_map_per_stage(app_env):
    at = _app()
    at.switch_page("pages/predict.py").run()
    at.number_input(key="n_random").set_value(2)
    at.button(key="draw").click().run()
    before = len(at.get("image"))
    at.toggle(key="saliency").set_value(True).run()
    assert not at.exception
    maps = [i for i in at.get("image") if "occlusion, peak" in str(i.proto)]
    assert len(at.get("image")) == before + 2 * (3 + 1)  # 2 images x (3 stages + the colour bar)
    assert len(maps) == 2 * 3
    occlusion = [i.proto.imgs[0].caption for i in maps]
    at.radio(key="saliency_method").set_value("gradcam").run()
    assert not at.exception
    captions = [i.proto.imgs[0].caption for i in at.get("image") if i.proto.imgs and ", peak" in i.proto.imgs[0].caption]
    # Grad-CAM for the CNN, occlusion for the two MLPs, per image; each caption names the method it shows
    assert sum("· Grad-CAM, peak" in c for c in captions) == 2 and sum("· occlusion, peak" in c for c in captions) == 4
    # an MLP's occlusion map says the same peak drop in both modes (not "1.00" once scaled for Grad-CAM mode)
    assert sorted(c for c in captions if c.startswith("MLP:")) == sorted(c for c in occlusion if c.startswith("MLP:"))
    assert any("Grad-CAM weight (occlusion for MLPs)" in i.proto.imgs[0].caption for i in at.get("image") if i.proto.imgs)


def test_explorer_shows_a_stored_ablation_and_warns_on_a_corrupt_one(trained_root, cifar_npz, tmp_path, monkeypatch):
    root = tmp_path / "ck"
    shutil.copytree(trained_root, root)
    rows = [
        {
            "variant": v,
            "removes": what,
            "seed": 0,
            "test_accuracy": a,
            "tta_accuracy": {"none": a},
            "train_seconds": 60.0,
            "n_train": 400,
            "n_test": 400,
            "epochs": 3,
            "train_machine": "CPU: fixture",
        }
        for v, what, a in (("full", "the recipe as shipped", 0.5), ("no_lookahead", "no Lookahead", 0.4))
    ]
    summary = [
        {
            "variant": r["variant"],
            "removes": r["removes"],
            "runs": 1,
            "mean_accuracy": r["test_accuracy"],
            "std": None,
            "mean_one_view": r["test_accuracy"],
            "vs_full_points": 100 * (r["test_accuracy"] - 0.5),
            "mean_train_seconds": 60.0,
        }
        for r in rows
    ]
    (root / "mlp" / "ablations.json").write_text(json.dumps({"rows": rows, "summary": summary}))
    monkeypatch.setenv("CIFAR_DASH_CHECKPOINTS", str(root))
    monkeypatch.setenv("CIFAR10_PATH", str(cifar_npz))
    at = _app()
    at.switch_page("pages/explorer.py").run()
    at.selectbox(key="explorer_stage").set_value("mlp").run()
    assert not at.exception
    assert any(s.value == "What each trick is worth" for s in at.subheader)
    table = next(d.value for d in at.dataframe if "variant" in d.value.columns)
    assert list(table["variant"]) == ["full", "no_lookahead"]
    assert list(table["vs full (points)"]) == [0.0, -10.0]
    assert any("2 runs, each on 400 training images for 3 epochs" in c.value for c in at.caption)
    (root / "mlp" / "ablations.json").write_text("{ not json")
    at.run()
    assert not at.exception
    assert any("ablations.json" in _plain(w.value) for w in at.warning)
    (root / "mlp" / "ablations.json").write_text(json.dumps({"rows": [{"variant": "full"}], "summary": summary}))
    at.run()
    assert not at.exception
    assert any("not in the expected form" in _plain(w.value) for w in at.warning)


def test_sidebar_offers_to_continue_the_published_run(app_env, monkeypatch):
    from cifar_dash import jobs

    calls = []
    monkeypatch.setattr(jobs, "start", lambda req: calls.append((req.stage, dataclasses.asdict(req))) or {})
    at = _app()
    box = at.checkbox(key="train_continue")
    assert box.label == "Continue the published 3-epoch run"  # the fixture's mlp: 3 epochs
    box.check().run()
    at.number_input(key="train_epochs").set_value(2).run()
    assert any("needs more than 3, not 2" in w.value for w in at.warning)
    assert any("first 400 images: set 'Limit images' to 400" in w.value for w in at.warning)  # the fixture's limit
    at.number_input(key="train_limit").set_value(400).run()
    at.number_input(key="train_epochs").set_value(5).run()
    assert not at.warning
    at.button(key="train_start").click().run()
    assert not at.exception
    key, kw = calls[-1]
    assert key == "mlp" and kw["epochs"] == 5 and kw["continue_from"] == "published"
    # a one-cycle recipe cannot be extended, so no offer (vgg_aug is untrained here anyway)
    at.selectbox(key="train_stage").set_value("vgg_aug").run()
    assert not [c for c in at.checkbox if c.key == "train_continue"]


def test_sidebar_sets_epochs_per_phase(app_env, monkeypatch):
    from cifar_dash import jobs

    calls = []
    monkeypatch.setattr(jobs, "start", lambda req: calls.append((req.stage, dataclasses.asdict(req))) or {})
    at = _app()
    at.selectbox(key="train_stage").set_value("mobilenetv2_finetune").run()
    head, finetune = (
        at.number_input(key="train_epochs_mobilenetv2_finetune_head"),
        at.number_input(key="train_epochs_mobilenetv2_finetune_finetune"),
    )
    assert (head.label, finetune.label) == ("head", "finetune") and "runs 3 finetune epochs" in finetune.help
    at.button(key="train_start").click().run()
    assert calls[-1] == ("mobilenetv2_finetune", {**calls[-1][1], "epochs": None})  # 0, 0: the recipe's
    finetune.set_value(6).run()
    at.button(key="train_start").click().run()
    assert not at.exception and calls[-1][1]["epochs"] == (0, 6)


def test_a_cancelled_job_card_offers_resume(app_env, monkeypatch):
    from cifar_dash import jobs

    cancelled = jobs.JobStatus(
        "cnn",
        "cancelled",
        {"pid": 123, "started": 0, "cmd": []},
        {"updated": 0},
        [],
        "cancelled on request; the run keeps its last backup and can be resumed",
    )
    monkeypatch.setattr(jobs, "all_status", lambda: {"cnn": cancelled})
    saved = {"run_id": "20260101-000000-abcd", "epochs_done": 3, "epochs": 15, "note": None}
    monkeypatch.setattr(jobs, "resumable", lambda stage: saved if stage == "cnn" else None)
    calls = []
    monkeypatch.setattr(jobs, "resume", lambda stage: calls.append(stage) or {})
    at = _app()
    assert any("Run 20260101-000000-abcd: 3 of 15 epochs logged." in c.value for c in at.caption), [
        c.value for c in at.caption
    ]
    notice = [i.value for i in at.info if "Cancelled on request" in i.value]
    assert [_plain(n) for n in notice] == [
        "Cancelled on request; the run keeps its last backup and can be resumed; the published model is untouched."
    ]
    at.button(key="resume_cnn").click().run()
    assert not at.exception and calls == ["cnn"]


@pytest.mark.parametrize("page", ["app.py", "pages/predict.py"])  # every page draws it through page_setup
def test_a_running_job_shows_its_progress_at_the_top_of_every_page(page, app_env, monkeypatch):
    from cifar_dash import jobs

    running = jobs.JobStatus(
        "cnn",
        "running",
        {"pid": 123, "started": 0, "cmd": []},
        {"updated": 0, "epoch": 2, "epochs": 4, "step": 50, "steps": 100, "eta_seconds": 125},
    )
    monkeypatch.setattr(jobs, "all_status", lambda: {"cnn": running})
    at = _app()
    if page != "app.py":
        at.switch_page(page).run()
    assert not at.exception
    bars = [b for b in at.get("progress") if "Training cnn" in b.proto.text]
    # in the main area (not only the sidebar's card): 1.5 of 4 epochs done
    assert bars and bars[0].proto.text == "Training cnn: epoch 2/4, ETA 2.1 min" and bars[0].proto.value == 37


def test_sidebar_says_when_bfloat16_would_be_emulated_here(app_env, monkeypatch):
    from cifar_dash import runtime

    monkeypatch.setattr(runtime, "info", lambda: {"gpu": None, "cpu_isa": "AVX-512"})
    at = _app()
    assert not [c for c in at.caption if "emulated" in c.value]
    at.checkbox(key="train_bf16").check().run()
    assert not at.exception
    assert [c for c in at.caption if "On this machine: this CPU has AVX-512 but neither" in c.value]
    monkeypatch.setattr(runtime, "info", lambda: {"gpu": "NVIDIA H100", "cpu_isa": "AVX-512"})
    at.run()
    assert not [c for c in at.caption if "emulated" in c.value]


def test_sidebar_says_which_precision_and_xla_training_will_use(app_env, monkeypatch):
    from cifar_dash import runtime

    monkeypatch.setattr(runtime, "host_info", lambda: {"gpu": None, "cpu": "Xeon", "cpu_isa": "AMX"})
    at = _app()
    assert at.checkbox(key="train_bf16").label == "Force bfloat16 compute"  # unticked: the machine's choice, said below
    said = [c.value for c in at.caption if c.value.startswith("Not forced: this machine's choice is used: ")]
    assert said and "mixed_bfloat16, XLA off (rule: a CPU with AMX" in said[0] and "cifar_dash tune" in said[0]
    monkeypatch.setattr(runtime, "host_info", lambda: {"gpu": None, "cpu": "EPYC", "cpu_isa": "AVX2"})
    at.run()
    said = [c.value for c in at.caption if c.value.startswith("Not forced: this machine's choice is used: ")]
    assert said and "float32" in said[0] and "(recipe;" in said[0]
    at.checkbox(key="train_bf16").check().run()  # asked for: the choice is the box's
    assert not [c for c in at.caption if c.value.startswith("Not forced: this machine's choice is used: ")]
    at.checkbox(key="train_bf16").uncheck().run()
    monkeypatch.setattr(runtime, "host_info", lambda: {"gpu": "GPU", "cpu": "EPYC", "cpu_isa": "AMX"})
    at.run()  # a GPU machine: the CPU rule does not apply, and the caption does not guess
    assert not [c for c in at.caption if c.value.startswith("Not forced: this machine's choice is used: ")]


def test_journey_explains_where_measured_order_inverts_the_seeds(trained_root, cifar_npz, tmp_path, monkeypatch):
    root = tmp_path / "ck"
    shutil.copytree(trained_root, root)
    monkeypatch.setenv("CIFAR_DASH_CHECKPOINTS", str(root))
    monkeypatch.setenv("CIFAR10_PATH", str(cifar_npz))
    deep = json.loads((root / "deep_mlp" / "metrics.json").read_text())["test_accuracy"]
    m = json.loads((root / "cnn" / "metrics.json").read_text())
    m["test_accuracy"] = min(1.0, deep + 0.05)  # the seed's order: no note
    (root / "cnn" / "metrics.json").write_text(json.dumps(m))
    at = _app()
    assert not [i for i in at.info if " though the seed reports it " in i.value]
    m["test_accuracy"] = deep - 0.05  # cnn, reported 27.82 points above deep_mlp, now measured 5 under it
    (root / "cnn" / "metrics.json").write_text(json.dumps(m))
    at = _app()
    notes = [i.value for i in at.info if " though the seed reports it " in i.value]
    assert len(notes) == 1
    assert notes[0].startswith(f"cnn measures {100 * (deep - 0.05):.2f}% (1 of its recipe's 15 epochs), 5.00 points under")
    assert "the seed reports it 27.82 points above (70.71% against 42.89%)" in notes[0]


def _plain(md: str) -> str:
    """Markdown-escaped text back to what it says."""
    return re.sub(r"\\(.)", r"\1", md)


def test_predict_page_takes_every_odd_upload_without_a_traceback(app_env):
    from cifar_dash import images
    from tests import odd_images

    # the uploader itself refuses other extensions (.svg, .ico) before the page sees them
    cases = [c for c in odd_images.cases() if c[0].rsplit(".", 1)[-1] in images.UPLOAD_EXTENSIONS]
    assert len(cases) >= 18
    at = _app()
    at.switch_page("pages/predict.py").run()
    at.file_uploader(key="uploads").set_value([(n, d, "application/octet-stream") for n, d, _ in cases]).run()
    assert not at.exception, at.exception
    errors = [_plain(e.value) for e in at.error]
    for name, _, expect in cases:
        if expect == "ok":
            assert not [e for e in errors if e.startswith(f"{name}:")], name
        else:
            assert [e for e in errors if e.startswith(f"{name}: ") and re.search(expect, e)], (name, errors)
    n_ok = sum(expect == "ok" for *_, expect in cases)
    assert sum("stages agree" in t or "Stages disagree" in t for t in _texts(at)) == n_ok
    # names are escaped: the Markdown in a file name is shown, not rendered
    assert any(e.value.startswith(r"markdown \*name\* \[x\]\(y\)\.png") for e in at.error)


def test_a_new_upload_predicts_only_itself(app_env):
    from PIL import Image

    def png(colour):
        buf = io.BytesIO()
        Image.new("RGB", (40, 40), colour).save(buf, "PNG")
        return (f"{colour}.png", buf.getvalue(), "image/png")

    at = _app()
    at.switch_page("pages/predict.py").run()
    at.file_uploader(key="uploads").set_value([png((200, 0, 0)), png((0, 200, 0))]).run()
    assert not at.exception
    cache = next(iter(_prediction_caches()))
    before = dict(cache.predicted)
    at.file_uploader(key="uploads").set_value([png((200, 0, 0)), png((0, 200, 0)), png((0, 0, 200))]).run()
    assert not at.exception
    assert {k: cache.predicted[k] - before.get(k, 0) for k in cache.predicted} == {"mlp": 1, "deep_mlp": 1, "cnn": 1}


def _prediction_caches():
    import gc

    from cifar_dash import predict

    return [o for o in gc.get_objects() if isinstance(o, predict.PredictionCache)]


@pytest.mark.parametrize(
    "damage",
    [
        "truncated model",
        "unknown layer class",
        "accuracy as text",
        "history without accuracy",
        "metrics not an object",
        "predictions of 9",
    ],
)
def test_a_damaged_stage_is_shown_as_damaged_on_every_page(damage, trained_root, cifar_npz, tmp_path, monkeypatch):
    root = tmp_path / "ck"
    shutil.copytree(trained_root, root)
    cnn = root / "cnn"
    if damage == "truncated model":
        data = (cnn / "model.keras").read_bytes()
        (cnn / "model.keras").write_bytes(data[: len(data) // 2])
    elif damage == "unknown layer class":  # a whole archive whose config.json loading would refuse
        from tests.conftest import rename_a_layer_class

        rename_a_layer_class(cnn / "model.keras")
    elif damage == "accuracy as text":
        m = json.loads((cnn / "metrics.json").read_text())
        m["test_accuracy"] = "0.74"
        (cnn / "metrics.json").write_text(json.dumps(m))
    elif damage == "history without accuracy":
        h = json.loads((cnn / "history.json").read_text())
        del h["epochs"][0]["accuracy"]
        (cnn / "history.json").write_text(json.dumps(h))
    elif damage == "metrics not an object":
        (cnn / "metrics.json").write_text("[1, 2]")
    else:
        with np.load(cnn / "test_predictions.npz") as z:
            np.savez(cnn / "test_predictions.npz", probs=z["probs"][:, :9], labels=z["labels"], indices=z["indices"])
    monkeypatch.setenv("CIFAR_DASH_CHECKPOINTS", str(root))
    monkeypatch.setenv("CIFAR10_PATH", str(cifar_npz))
    r = results.load_result("cnn")
    assert r.status == "damaged" and str(cnn) in r.error
    at = _app()
    assert any("cnn" in t for t in _texts(at) + [w.value for w in at.warning] + [e.value for e in at.error])
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
    at.switch_page("pages/explorer.py").run()
    at.selectbox(key="explorer_stage").set_value("cnn").run()
    assert not at.exception
    assert [e for e in at.error if "cnn" in e.value]
    at.selectbox(key="explorer_stage").set_value("mlp").run()  # the others still work
    assert not at.exception and not at.error
    at.switch_page("pages/predict.py").run()
    at.button(key="draw").click().run()
    assert not at.exception
    assert sum("stages agree" in t or "Stages disagree" in t for t in _texts(at)) == 4


def test_an_upload_over_the_size_limit_is_refused_by_name(app_env):
    from PIL import Image

    from cifar_dash import images

    buf = io.BytesIO()
    Image.new("RGB", (30, 30), (1, 2, 3)).save(buf, "PNG")
    big = buf.getvalue() + b"\0" * images.MAX_BYTES  # a valid PNG padded over the limit
    at = _app()
    at.switch_page("pages/predict.py").run()
    at.file_uploader(key="uploads").set_value([("huge.png", big, "image/png"), ("ok.png", buf.getvalue(), "image/png")])
    at.run()
    assert not at.exception
    assert [e for e in at.error if _plain(e.value) == f"huge.png: 20.0 MB is over the {images.MAX_MB} MB limit"]
    assert sum("stages agree" in t or "Stages disagree" in t for t in _texts(at)) == 1  # ok.png still predicted


def test_a_missing_model_and_a_stale_stage_are_said_plainly(trained_root, cifar_npz, tmp_path, monkeypatch):
    root = tmp_path / "ck"
    shutil.copytree(trained_root, root)
    (root / "cnn" / "model.keras").unlink()
    info = json.loads((root / "deep_mlp" / "train_info.json").read_text())
    info["run_id"] = "a-newer-run-never-evaluated"
    (root / "deep_mlp" / "train_info.json").write_text(json.dumps(info))
    monkeypatch.setenv("CIFAR_DASH_CHECKPOINTS", str(root))
    monkeypatch.setenv("CIFAR10_PATH", str(cifar_npz))
    assert results.load_result("cnn").status == "damaged"
    assert results.load_result("deep_mlp").status == "stale"
    at = _app()
    assert [e for e in at.error if "cnn" in e.value and "model.keras is missing" in _plain(e.value)]
    at.switch_page("pages/explorer.py").run()
    at.selectbox(key="explorer_stage").set_value("deep_mlp").run()
    assert not at.exception
    assert [w for w in at.warning if "retrained but not evaluated" in _plain(w.value)]


def _offline(monkeypatch):
    import keras

    def no_network():
        raise OSError("Name or service not known")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", no_network)
    monkeypatch.delenv("CIFAR10_PATH", raising=False)


def test_every_page_shows_test_images_offline_from_a_fresh_clone(tmp_path, monkeypatch):
    """README's command on a machine without internet: no CIFAR10_PATH, the download fails. The shipped checkpoints
    and the shipped test-image sample fill every gallery."""
    _offline(monkeypatch)
    monkeypatch.delenv("CIFAR_DASH_CHECKPOINTS", raising=False)
    at = _app()
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        assert not [w for w in at.warning if "unavailable" in w.value], page
    at.switch_page("pages/explorer.py").run()
    images = at.get("image")
    assert len(images) >= 24, len(images)  # the cell's gallery and the most confident mistakes
    assert any("sample shipped with the app" in c.value for c in at.caption)
    at.switch_page("pages/compare.py").run()
    assert len(at.get("image")) >= 16


def test_a_damaged_test_image_sample_is_refused(tmp_path, monkeypatch):
    from cifar_dash import testimages

    _offline(monkeypatch)
    folder = tmp_path / "assets"
    shutil.copytree(testimages.assets_dir(), folder)
    raw = bytearray((folder / testimages.SAMPLE).read_bytes())
    raw[-100] ^= 0xFF
    (folder / testimages.SAMPLE).write_bytes(bytes(raw))
    t = testimages.load_sample(folder)
    assert t.x is None and "does not match the sha256" in t.error
    good = testimages.load_sample()
    assert (
        good.source == "sample"
        and good.n_available == json.loads((testimages.assets_dir() / testimages.SAMPLE_INFO).read_text())["n_images"]
    )
    monkeypatch.setenv("CIFAR_DASH_ASSETS", str(folder))
    monkeypatch.delenv("CIFAR_DASH_CHECKPOINTS", raising=False)
    at = _app()
    at.switch_page("pages/explorer.py").run()
    assert not at.exception
    assert [w for w in at.warning if "Test images unavailable" in _plain(w.value) and "sha256" in _plain(w.value)]


def test_the_sample_is_not_shown_for_checkpoints_of_other_data(trained_root, monkeypatch):
    _offline(monkeypatch)
    monkeypatch.setenv("CIFAR_DASH_CHECKPOINTS", str(trained_root))  # evaluated on synthetic test images
    at = _app()
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
    at.switch_page("pages/explorer.py").run()
    assert [w for w in at.warning if "evaluated on other data" in _plain(w.value)]
    assert not at.get("image") and at.get("plotly_chart")  # the charts come from stored artifacts


def test_journey_train_now_starts_the_missing_stage(app_env, monkeypatch):
    from cifar_dash import jobs

    started = []
    monkeypatch.setattr(jobs, "start", lambda key, **kw: started.append((key, kw)) or {"pid": 1})
    at = _app()
    at.button(key="train_now_vgg_aug").click().run()
    assert not at.exception
    assert started == [("vgg_aug", {"data_path": os.environ["CIFAR10_PATH"]})]


def test_pages_import_keras_only_where_a_model_runs(app_env):
    """Pages that only read stored files pay no Keras/TensorFlow import (about 4 s on a fresh server): every page,
    the explorer with its saliency switch off and the upload page before anything is uploaded."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({str(ROOT / 'app.py')!r}, default_timeout=120)\n"
        "at.run()\n"
        "assert not at.exception, at.exception\n"
        f"for page in {PAGES!r}:\n"
        "    at.switch_page(page).run()\n"
        "    assert not at.exception, (page, at.exception)\n"
        "import cifar_dash.jobs, cifar_dash.results, cifar_dash.claims, cifar_dash.predict, cifar_dash.stages\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'tensorflow', 'jax'}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_explorer_saliency_runs_only_when_asked(app_env):
    at = _app()
    at.switch_page("pages/explorer.py").run()
    at.selectbox(key="explorer_stage").set_value("cnn").run()
    before = len(at.get("image"))
    at.toggle(key="explain_on").set_value(True).run()
    assert not at.exception
    assert len(at.get("image")) == before + 3 + 1  # one map per trained stage (mlp, deep_mlp, cnn) + colour bar


def test_journey_title_follows_the_measured_curve(app_env):
    at = _app()
    mlp = json.loads((app_env / "mlp" / "metrics.json").read_text())["test_accuracy"]
    best = max(json.loads((app_env / k / "metrics.json").read_text())["test_accuracy"] for k in ("mlp", "deep_mlp", "cnn"))
    assert at.title[0].value == f"CIFAR-10, from a {100 * mlp:.0f}% MLP to {100 * best:.0f}%"
    assert analysis.journey_title([]) == "CIFAR-10, from an MLP to an ImageNet ResNet"
    assert analysis.journey_title(results.load_all(ROOT / "checkpoints")) == "CIFAR-10, from a 50% MLP to 95%"


def test_upload_page_without_a_detector_or_temperatures_says_how_to_fit_them(checkpoints_copy):
    """Artifacts from before calibration: no ood.json, and a metrics.json without a temperature."""
    from PIL import Image

    metrics = json.loads((checkpoints_copy / "cnn" / "metrics.json").read_text())
    assert metrics["calibration"]["fit_on"] == "validation"  # a new run fits its own temperature
    del metrics["calibration"]["temperature"]
    (checkpoints_copy / "cnn" / "metrics.json").write_text(json.dumps(metrics))
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (10, 200, 30)).save(buf, "PNG")
    at = _app()
    at.switch_page("pages/predict.py").run()
    assert "airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck" in " ".join(c.value for c in at.caption)
    at.file_uploader(key="uploads").set_value([("green.png", buf.getvalue(), "image/png")]).run()
    assert not at.exception
    said = " ".join(c.value for c in at.caption).replace("\\", "")  # shown as typed: Markdown escapes dropped
    assert "No none-of-these-classes flag" in said and "python -m cifar_dash calibrate" in said
    assert "Not calibrated yet (raw probabilities shown): `cnn`. Fit them with `python -m cifar_dash calibrate cnn`" in said


def test_upload_page_shows_scaled_probabilities_the_weighted_summary_and_the_flag(detector_root, cifar_npz, monkeypatch):
    from PIL import Image

    from cifar_dash import answers, calibration, images, ood, predict

    monkeypatch.setenv("CIFAR_DASH_CHECKPOINTS", str(detector_root))
    monkeypatch.setenv("CIFAR10_PATH", str(cifar_npz))
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (10, 200, 30)).save(buf, "PNG")
    at = _app()
    at.switch_page("pages/predict.py").run()
    at.file_uploader(key="uploads").set_value([("**b** [x](y).png", buf.getvalue(), "image/png")]).run()
    assert not at.exception
    record = json.loads((detector_root / "ood.json").read_text())
    rule = next(c.value for c in at.caption if "probably none of these classes" in c.value)
    assert f"{record['false_alarm_rate']:.1%} of the {record['n_test']:,} real CIFAR-10 test images" in rule
    assert f"{record['detection_rate_evaluation']:.0%} of {record['n_evaluation']} held-out pictures" in rule
    assert analysis.VOTE_RULE in rule
    arr = images.to_model_input(buf.getvalue())
    det = ood.load(detector_root)
    score = float(det.scores(predict.load_stage(ood.STAGE).layer_features(ood.LAYER, arr[None]))[0])
    verdict = next(m.value for m in at.markdown if "Stages disagree" in m.value or "stages agree" in m.value)
    flagged = "**Probably none of these ten classes**" in verdict
    assert flagged == (score > det.threshold) and f"{score:.3f}" in verdict
    # the CNN card shows its calibrated top probability, not the raw one
    metrics = json.loads((detector_root / "cnn" / "metrics.json").read_text())
    scaled = calibration.scale(predict.predict(predict.load_stage("cnn"), arr[None]), metrics["calibration"]["temperature"])
    card = next(m.value for m in at.markdown if m.value.startswith("**CNN**"))
    assert f"{CLASS_NAMES[int(scaled.argmax())]} · {scaled.max():.0%}" in card
    assert "Not calibrated" not in " ".join(c.value for c in at.caption)
    # every stage's card says whether it agrees with the weighted summary, so the cards of a row are equally tall
    cards = {s.key: m.value for s in stages.STAGES for m in at.markdown if m.value.startswith(f"**{s.label}**")}
    assert len(cards) >= 2 and all(c.count("\n") == 2 for c in cards.values()), cards
    differs = {k for k, c in cards.items() if c.endswith(":orange[differs from the summary]")}
    agrees = {k for k, c in cards.items() if c.endswith(":gray[agrees with the summary]")}
    assert differs | agrees == set(cards) and not differs & agrees
    stored = {k: json.loads((detector_root / k / "metrics.json").read_text()) for k in cards}
    per_stage = {k: answers.calibrated(predict.predict(predict.load_stage(k), arr[None])[0], stored[k])[0] for k in cards}
    accuracy = {k: m["test_accuracy"] for k, m in stored.items()}
    assert differs == set(analysis.weighted_vote(per_stage, accuracy)["differs"])
    # the file name is shown as text, never as Markdown
    captions = [i.proto.imgs[0].caption for i in at.get("image") if i.proto.imgs]
    assert "\\*\\*b\\*\\* \\[x\\]\\(y\\)\\.png" in captions, captions


def test_the_sidebar_form_survives_a_reload(app_env):
    at = _app()
    at.selectbox(key="train_stage").set_value("cnn").run()
    at.number_input(key="train_epochs").set_value(3).run()
    at.number_input(key="train_limit").set_value(500).run()
    at.number_input(key="train_batch").set_value(32).run()
    assert not at.exception
    assert at.number_input(key="train_batch").label == "Batch size (0 = recipe's 128)"
    saved = dict(at.query_params)  # what the page wrote into its URL
    assert {k: saved[k] for k in ("train_stage", "train_epochs", "train_limit", "train_batch")} == {
        "train_stage": "cnn",
        "train_epochs": "3",
        "train_limit": "500",
        "train_batch": "32",
    }
    fresh = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)  # a reload: a new session, same URL
    fresh.query_params.update(saved)
    fresh.run()
    assert not fresh.exception
    assert fresh.selectbox(key="train_stage").value == "cnn"
    assert fresh.number_input(key="train_epochs").value == 3 and fresh.number_input(key="train_limit").value == 500
    assert fresh.number_input(key="train_batch").value == 32


@pytest.fixture
def runs_env(checkpoints_copy, cifar_npz):
    """A copy of the fixture checkpoints where mlp has a second finished run beside the published one."""
    from cifar_dash import train

    root = checkpoints_copy
    new = train.train("mlp", epochs=1, limit=400, data_path=cifar_npz, out_dir=root / "mlp")
    return root, new.name


def _training_page():
    at = _app()
    at.switch_page("pages/training.py").run()
    assert not at.exception, at.exception
    return at


def test_training_page_lists_and_compares_runs(runs_env):
    root, new = runs_env
    published = json.loads((root / "mlp" / "train_info.json").read_text())["run_id"]
    at = _training_page()
    table = at.dataframe[1].value
    assert list(table["run"]) == [published, new] and list(table["published"]) == ["yes", ""]
    assert list(table["state"]) == ["finished", "finished"] and list(table["epochs"]) == ["3", "1"]
    assert at.selectbox(key="cmp_run_a_mlp").value == published and at.selectbox(key="cmp_run_b_mlp").value == new
    metrics = {m.label: m for m in at.metric}
    new_acc = json.loads((root / "mlp" / "runs" / new / "metrics.json").read_text())["test_accuracy"]
    old_acc = json.loads((root / "mlp" / "metrics.json").read_text())["test_accuracy"]
    assert metrics["Run B test accuracy"].value == f"{100 * new_acc:.2f}%"
    assert metrics["Run B test accuracy"].delta == f"{100 * (new_acc - old_acc):+.2f} points"
    assert metrics["Epochs (A / B)"].value == "3 / 1"
    charts = _charts(at)
    assert [d["name"] for d in charts[-1]["data"]] == [f"A {published} (validation)", f"B {new} (validation)"]
    assert len(_arr(charts[-2]["data"][0]["y"])) == 10  # the per-class change


def test_promote_asks_for_confirmation_and_can_be_undone(runs_env):
    root, new = runs_env
    before = (root / "mlp" / "model.keras").read_bytes()
    published = json.loads((root / "mlp" / "train_info.json").read_text())["run_id"]
    at = _training_page()
    at.button(key="promote_ask").click().run()
    assert (root / "mlp" / "model.keras").read_bytes() == before  # nothing happens before the confirmation
    labels = [m.label for m in at.metric]
    assert f"Published now: {published}" in labels and f"Would become: {new}" in labels
    at.button(key="promote_cancel").click().run()
    assert not [b for b in at.button if b.key == "promote_confirm"]
    at.button(key="promote_ask").click().run()
    at.button(key="promote_confirm").click().run()
    assert not at.exception
    assert (root / "mlp" / "model.keras").read_bytes() == (root / "mlp" / "runs" / new / "model.keras").read_bytes()
    assert any(f"{published} is kept as a run" in s.value for s in at.success)
    at.selectbox(key="promote_pick_mlp").set_value(published).run()  # undo: promote the old one back
    at.button(key="promote_ask").click().run()
    at.button(key="promote_confirm").click().run()
    assert (root / "mlp" / "model.keras").read_bytes() == before


def test_a_run_can_be_deleted_but_never_the_published_one(runs_env):
    root, new = runs_env
    damaged = root / "mlp" / "runs" / "20260101-000000-beef"
    shutil.copytree(root / "mlp" / "runs" / new, damaged)
    (damaged / "train_info.json").write_text('{"run_id": "20260101-000000-beef", "finished": 1, "started": 0}')
    (damaged / "model.keras").write_bytes(b"edited by hand")
    at = _training_page()
    table = at.dataframe[1].value
    row = table[table["run"] == damaged.name].iloc[0]
    assert row["state"] == "damaged" and row["note"]  # listed with its reason, the page intact
    at.selectbox(key="delete_pick_mlp").set_value(damaged.name).run()
    at.button(key="delete_ask").click().run()
    at.button(key="delete_confirm").click().run()
    assert not damaged.exists()
    assert at.selectbox(key="delete_pick_mlp").options == [new]  # the published run is not offered
    at.button(key="delete_ask").click().run()
    assert (root / "mlp" / "runs" / new).exists() and any("cannot be undone" in w.value for w in at.warning)
    at.button(key="delete_confirm").click().run()
    assert not at.exception and not (root / "mlp" / "runs" / new).exists()


def test_the_explorer_lists_the_stages_runs(runs_env):
    root, new = runs_env
    at = _app()
    at.switch_page("pages/explorer.py").run()
    at.selectbox(key="explorer_stage").set_value("mlp").run()
    assert not at.exception
    assert any(e.label == "Runs of this stage: 2 (1 besides the published one)" for e in at.expander)
    assert any(list(df.value.get("run", []))[-1:] == [new] for df in at.dataframe)


def test_inside_maps_two_stages_and_ranks_doubtful_labels(checkpoints_copy):
    from cifar_dash import embedding, label_issues

    label_issues.build(checkpoints_copy, stream=io.StringIO())
    at = _app()
    table = at.dataframe[0].value
    mlp = json.loads((checkpoints_copy / "mlp" / "metrics.json").read_text())
    assert table["kNN separation %"][0] == pytest.approx(round(100 * mlp["separation"]["knn_accuracy"], 2))
    at.switch_page("pages/inside.py").run()
    assert not at.exception, at.exception
    # left: the first stage; right: the most accurate of the others
    best = max(("deep_mlp", "cnn"), key=lambda k: results.load_result(k).accuracy)
    assert at.selectbox(key="map_left").value == "mlp" and at.selectbox(key="map_right").value == best
    maps = [c for c in _charts(at) if c["data"][0].get("type") == "scattergl"]
    assert len(maps) == 2
    for chart, key in zip(maps, ("mlp", best)):
        preds = results.predictions(key)
        shown = np.concatenate([_arr(t["customdata"]).reshape(-1) for t in chart["data"]]).astype(int)
        assert sorted(shown.tolist()) == sorted(preds.indices.tolist())  # every test image once
        crosses = sum(len(_arr(t["customdata"]).reshape(-1)) for t in chart["data"] if t["marker"]["symbol"] == "x")
        assert crosses == int((preds.predicted != preds.labels).sum())
        sep = embedding.load(checkpoints_copy / key).meta["separation"]["knn_accuracy"]
        assert f"kNN separation {100 * sep:.1f}%" in chart["layout"]["title"]["text"]
        assert chart["layout"]["dragmode"] is False  # taps select; a drag scrolls the page on a phone
    at.segmented_control(key="map_drag").set_value("lasso").run()
    assert [c["layout"]["dragmode"] for c in _charts(at) if c["data"][0].get("type") == "scattergl"] == ["lasso"] * 2
    record = label_issues.load(checkpoints_copy)
    shown = min(24, len(record["entries"]))
    assert len(at.get("image")) == shown  # the suspects' gallery (no selection yet)
    suspects = next(d.value for d in at.dataframe if "suggested" in d.value.columns)
    assert list(suspects["test image"]) == [e["index"] for e in record["entries"][:shown]]
    what_if = next(d.value for d in at.dataframe if "measured %" in d.value.columns and "stage" in d.value.columns)
    assert set(what_if["stage"]) == {"mlp", "deep_mlp", "cnn"}
    assert any("not always right" in t for t in _texts(at))


def test_inside_says_how_to_compute_a_missing_map_and_ranking(checkpoints_copy):
    (checkpoints_copy / "mlp" / "embedding.npz").unlink()
    at = _app()
    at.switch_page("pages/inside.py").run()
    assert not at.exception, at.exception
    notes = [i.value for i in at.info]
    assert any("No feature map for mlp yet" in n and "python -m cifar_dash embed mlp" in n for n in notes)
    assert any("python -m cifar_dash label-issues" in n for n in notes)
    assert len([c for c in _charts(at) if c["data"][0].get("type") == "scattergl"]) == 1  # the other map still drawn
