"""Saliency, robustness sweep and the seed's claims."""

import json

import numpy as np
import pytest

from cifar_dash import artifacts, claims, figures, predict, results, robustness, saliency


def test_occlusion_map_shape_finite_and_differs_between_stages(trained_root, monkeypatch, cifar_npz):
    monkeypatch.setenv("CIFAR_DASH_CHECKPOINTS", str(trained_root))
    img = np.load(cifar_npz)["x_test"][0]
    maps = {k: saliency.occlusion_map(predict.load_stage(k).model, img)["map"] for k in ("mlp", "cnn")}
    for m in maps.values():
        assert m.shape == (32, 32) and np.isfinite(m).all()
    assert not np.allclose(maps["mlp"], maps["cnn"])
    over = saliency.overlay(img, maps["cnn"], max(float(np.max(m)) for m in maps.values()))
    assert over.shape == (128, 128, 3) and over.dtype == np.uint8


def test_occlusion_map_against_a_hand_built_model():
    """A 'model' whose class-0 probability is the mean of the top-left 8x8 block: hiding that block is all that
    matters, and the drop is exactly computable."""
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Cropping2D(((0, 24), (0, 24)))(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Lambda(
        lambda t: keras.ops.concatenate([t[:, :1] / 255, 1 - t[:, :1] / 255] + [keras.ops.zeros_like(t[:, :1])] * 8, axis=1)
    )(x)
    model = keras.Model(inp, x)
    img = np.zeros((32, 32, 3), np.uint8)
    img[:8, :8] = 255  # class 0 with probability 1; image mean is 255/16
    out = saliency.occlusion_map(model, img, patch=8, stride=8)
    assert out["target"] == 0 and out["probability"] == pytest.approx(1.0)
    drop = 1 - (255 / 16) / 255
    assert out["map"][0, 0] == pytest.approx(drop, rel=1e-5)
    assert np.allclose(out["map"][8:, :], 0) and np.allclose(out["map"][:, 8:], 0)


def test_shift_functions():
    x = np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3)
    t = robustness.translate(x, 2)
    np.testing.assert_array_equal(t[:, 2:, 2:], x[:, :30, :30])
    g = robustness.grayscale(x)
    assert (g[..., 0] == g[..., 1]).all()
    edges = robustness.shape_only(np.tile(np.array([0, 255], np.uint8).repeat(16)[None, None, :, None], (1, 32, 1, 3)))
    assert edges[0, 10, 15:17, 0].min() == 255 and edges[0, 10, 0, 0] == 0  # edge at the step, none in flat area
    assert robustness.colour_only(x).shape == x.shape and robustness.jpeg(x).shape == x.shape


def test_robustness_command_writes_its_artifact_and_the_chart_shows_it(trained_root, tmp_path, cifar_npz, monkeypatch):
    import shutil

    root = tmp_path / "ck"
    shutil.copytree(trained_root, root)
    monkeypatch.setenv("CIFAR_DASH_CHECKPOINTS", str(root))
    out = robustness.run("mlp", limit=100, data_path=cifar_npz)
    stored = json.loads((root / "mlp" / "robustness.json").read_text())
    assert stored["n_test"] == 100 and set(stored["accuracy"]) == set(robustness.CONDITIONS)
    assert stored["accuracy"]["clean"] == pytest.approx(out["accuracy"]["clean"])
    preds = results.predictions("mlp")
    assert stored["accuracy"]["clean"] == pytest.approx((preds.predicted[:100] == preds.labels[:100]).mean())
    fig = figures.robustness_chart({"mlp": stored})
    assert fig.data[0].name == "mlp" and len(fig.data[0].x) == len(robustness.CONDITIONS)
    r = results.load_result("mlp")
    assert claims.robustness_of(r)["n_test"] == 100
    verdict = claims.colour_vs_shape(results.load_all())
    a = stored["accuracy"]  # the evidence quotes the stored sweep
    assert (
        f"the MLP keeps {100 * a['colour only (blur radius 4)'] / a['clean']:.1f}% of its clean accuracy" in verdict.evidence
    )


def _hand_result(key, folder, accuracy, train_acc=None, val_acc=None, params=1000):
    from cifar_dash import stages

    history = [{"accuracy": train_acc, "val_accuracy": val_acc, "loss": 1.0}] if train_acc is not None else []
    metrics = {"test_accuracy": accuracy, "params": params, "run_id": key}
    return results.StageResult(stages.get(key), "trained", metrics=metrics, history=history, folder=folder)


@pytest.mark.parametrize("colour,shape,verdict", [(0.40, 0.20, "supported"), (0.20, 0.40, "contradicted")])
def test_colour_vs_shape_verdict_follows_the_stored_sweep(colour, shape, verdict, tmp_path):
    folder = tmp_path / "mlp"
    folder.mkdir()
    sweep = {"clean": 0.5, "colour only (blur radius 4)": colour, "shape only (grayscale edges)": shape}
    (folder / "robustness.json").write_text(json.dumps({"run_id": "mlp", "n_test": 100, "accuracy": sweep}))
    c = claims.colour_vs_shape([_hand_result("mlp", folder, 0.5)])
    assert c.verdict == verdict
    assert f"keeps {100 * colour / 0.5:.1f}% of its clean accuracy (50.0%)" in c.evidence


def test_claims_are_computed_from_artifacts(trained_root, monkeypatch):
    monkeypatch.setenv("CIFAR_DASH_CHECKPOINTS", str(trained_root))
    res = results.load_all()
    found = {c.claim: c for c in claims.evaluate_claims(res)}
    deep = next(c for k, c in found.items() if "deep" in k)
    dm = results.load_result("deep_mlp")
    mlp = results.load_result("mlp")
    gap = {r.stage.key: r.history[-1]["accuracy"] - r.history[-1]["val_accuracy"] for r in (mlp, dm)}
    expected = "supported" if dm.accuracy < mlp.accuracy and gap["deep_mlp"] > gap["mlp"] else "contradicted"
    assert deep.verdict == expected and f"test {100 * dm.accuracy:.1f}%" in deep.evidence
    assert next(c for k, c in found.items() if "Label smoothing" in k).verdict == "not measured"


@pytest.mark.parametrize(
    "deep_acc,deep_train,verdict",
    [(0.47, 0.90, "supported"), (0.52, 0.90, "contradicted"), (0.47, 0.50, "contradicted")],
)
def test_deep_mlp_verdict_needs_lower_test_accuracy_and_a_wider_gap(deep_acc, deep_train, verdict, tmp_path):
    mlp = _hand_result("mlp", tmp_path, 0.50, train_acc=0.55, val_acc=0.50)  # gap 5 points
    deep = _hand_result("deep_mlp", tmp_path, deep_acc, train_acc=deep_train, val_acc=deep_acc)
    c = claims.deep_mlp_overfits([mlp, deep])
    assert c.verdict == verdict
    assert f"(gap {100 * (deep_train - deep_acc):.1f} points), test {100 * deep_acc:.1f}%" in c.evidence


def test_robustness_of_ignores_a_sweep_of_an_older_model(trained_root, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "ck"
    shutil.copytree(trained_root, root)
    monkeypatch.setenv("CIFAR_DASH_CHECKPOINTS", str(root))
    artifacts.write_json(root / "mlp" / "robustness.json", {"run_id": "old", "accuracy": {}, "n_test": 1})
    assert claims.robustness_of(results.load_result("mlp")) is None


def test_gradcam_on_conv_stages_and_fallback_for_mlps(trained_root, monkeypatch, cifar_npz):
    monkeypatch.setenv("CIFAR_DASH_CHECKPOINTS", str(trained_root))
    img = np.load(cifar_npz)["x_test"][1]
    cnn = predict.load_stage("cnn").model
    out = saliency.gradcam_map(cnn, img)
    assert out["layer"] == "block3_relu" and out["grid"] == [8, 8]
    assert out["map"].shape == (32, 32) and np.isfinite(out["map"]).all()
    assert out["map"].min() >= 0 and out["map"].max() == pytest.approx(1.0)
    assert out["target"] == int(np.argmax(predict.predict(predict.load_stage("cnn"), img[None])[0]))
    mlp = predict.load_stage("mlp").model
    with pytest.raises(saliency.SaliencyUnavailable, match="MLP"):
        saliency.gradcam_map(mlp, img)
    fallback = saliency.stage_map(mlp, img, method="gradcam")
    assert fallback["method"] == "occlusion" and fallback["map"].max() <= 1.0 + 1e-6
    assert saliency.stage_map(cnn, img, method="gradcam")["method"] == "Grad-CAM"


def test_speedrun_claim_compares_against_the_best_trained_resnet():
    from cifar_dash import stages

    def res(key, acc, params, secs, backbone=None):
        m = {
            "test_accuracy": acc,
            "params": params,
            "flops_per_image": 2.4e8 if key == "speedrun" else 8.4e9,
            "train_seconds": secs,
            "epochs": 10,
            "train_machine": "CPU",
            "backbone": backbone,
        }
        return results.StageResult(stages.get(key), "trained", metrics=m)

    fast = res("speedrun", 0.92, 1_973_944, 1300)
    rn = res("resnet50v2", 0.93, 23_600_000, 3000, "resnet50")
    assert claims.small_net_from_scratch([fast]).verdict == "not measured"
    c = claims.small_net_from_scratch([fast, rn])
    assert c.verdict == "contradicted" and "92.0%" in c.evidence and "resnet50 backbone" in c.evidence
    assert claims.small_net_from_scratch([res("speedrun", 0.94, 1_973_944, 1300), rn]).verdict == "supported"
    # runs on different machines are compared by training compute, not minutes
    for r_ in (fast, rn):
        r_.metrics["n_train"] = 50_000
    slow_machine = res("speedrun", 0.94, 1_973_944, 9000)
    slow_machine.metrics["n_train"] = 50_000
    c = claims.small_net_from_scratch([slow_machine, rn])
    assert c.verdict == "supported" and "35.0x the compute" in c.evidence and "0.36 PFLOP" in c.evidence


def _resnet(key, vals, rates, test_acc, backbone="resnet50", train_info=None):
    from cifar_dash import stages

    history = [
        {"epoch": i + 1, "val_accuracy": v, "learning_rate": lr, "accuracy": 0.9}
        for i, (v, lr) in enumerate(zip(vals, rates))
    ]
    m = {"test_accuracy": test_acc, "epochs": len(vals), "backbone": backbone}
    return results.StageResult(stages.get(key), "trained", metrics=m, history=history, train_info=train_info or {})


def test_plateau_claim_reads_the_rate_and_validation_history():
    plain = _resnet("resnet50v2", [0.90], [1e-4], 0.9)
    assert claims.plateau_halving_helps([plain]).verdict == "not measured"
    assert "never halved" in claims.plateau_halving_helps([plain]).evidence
    lifted = _resnet("resnet50v2_sota", [0.9298, 0.9278, 0.9310], [1e-4, 1e-4, 5e-5], 0.93)
    c = claims.plateau_halving_helps([plain, lifted])
    assert c.verdict == "supported"
    assert c.evidence == "resnet50v2_sota: rate 5.0e-05 from epoch 3, validation accuracy 93.10% against 92.98% before."
    flat = _resnet("resnet50v2_sota", [0.9298, 0.9278, 0.9290], [1e-4, 1e-4, 5e-5], 0.93)
    assert claims.plateau_halving_helps([flat]).verdict == "contradicted"


def test_tricks_claim_compares_at_the_same_number_of_epochs():
    plain = _resnet("resnet50v2", [0.9184], [1e-4], 0.9182)
    # sota continued once: its 1-epoch run measured 92.71% on the test set, kept in train_info
    sota = _resnet(
        "resnet50v2_sota",
        [0.9298, 0.9278],
        [1e-4, 1e-4],
        0.9255,
        train_info={"continued_from": {"epochs": 1, "test_accuracy": 0.9271}},
    )
    c = claims.tricks_help_at_same_budget([plain, sota])
    assert c.verdict == "supported"
    assert c.evidence.startswith(
        "After 1 epoch each: validation accuracy 91.84% plain -> 92.98% with the tricks; "
        "test accuracy after 1 epoch 91.82% -> 92.71%."
    )
    assert "rates differ" not in c.evidence
    plain3 = _resnet("resnet50v2", [0.9184, 0.9202, 0.9336], [1e-4, 1e-4, 1e-4], 0.9341)
    halved = _resnet("resnet50v2_sota", [0.9298, 0.9278, 0.9446], [1e-4, 1e-4, 5e-5], 0.9463)
    c3 = claims.tricks_help_at_same_budget([plain3, halved])
    assert c3.verdict == "supported"
    assert c3.evidence.endswith(
        "The rates differ too (plain 1e-04, 1e-04, 1e-04; with the tricks 1e-04, 1e-04, "
        "5e-05), so the gap is the tricks and the schedule together."
    )
    worse = _resnet("resnet50v2_sota", [0.9100], [1e-4], 0.91)
    assert claims.tricks_help_at_same_budget([plain, worse]).verdict == "contradicted"
    other = _resnet("resnet50v2_sota", [0.95], [1e-4], 0.95, backbone="resnet50v2")
    assert claims.tricks_help_at_same_budget([plain, other]).verdict == "not measured"


def test_tricks_claim_calls_a_gap_under_two_standard_errors_noise():
    # the shipped pair after five epochs each: validation 95.20% plain, 94.96% with the tricks, on 5,000 images
    plain = _resnet(
        "resnet50v2",
        [0.9184, 0.9202, 0.9336, 0.9322, 0.9520],
        [1e-4] * 4 + [5e-5],
        0.9516,
        train_info={"n_validation": 5000},
    )
    sota = _resnet(
        "resnet50v2_sota",
        [0.9298, 0.9278, 0.9446, 0.9492, 0.9496],
        [1e-4, 1e-4] + [5e-5] * 3,
        0.9521,
        train_info={"n_validation": 5000},
    )
    c = claims.tricks_help_at_same_budget([plain, sota])
    assert c.verdict == "within noise"
    # sqrt(2 * 0.9508 * 0.0492 / 5000) = 0.432 points, so -0.24 points is 0.6 standard errors
    assert "The validation gap (-0.24 points) is 0.6 standard errors" in c.evidence
    assert c.evidence.endswith("at this budget the two recipes are not told apart.")
    # the same gap on 50,000 images would be 1.75 standard errors: still noise; 1.0 point on 5,000 (2.2-2.5) is not
    assert claims.validation_gap_z(0.9520, 0.9496, 50_000) == pytest.approx(-1.75, abs=0.01)
    wide = _resnet("resnet50v2_sota", [0.9620], [1e-4], 0.96, train_info={"n_validation": 5000})
    narrow = _resnet("resnet50v2", [0.9520], [1e-4], 0.95, train_info={"n_validation": 5000})
    assert claims.tricks_help_at_same_budget([narrow, wide]).verdict == "supported"
    lower = _resnet("resnet50v2_sota", [0.9420], [1e-4], 0.94, train_info={"n_validation": 5000})
    assert claims.tricks_help_at_same_budget([narrow, lower]).verdict == "contradicted"
    assert claims.validation_gap_z(0.95, 0.96, None) is None


def test_label_smoothing_claim_says_when_a_model_is_under_confident():
    def cal(conf, wrong):
        return {"calibration": {"mean_confidence": conf, "mean_confidence_wrong": wrong, "ece": abs(conf - 0.9)}}

    plain = _resnet("resnet50v2", [0.9], [1e-4], 0.9)
    smooth = _resnet("resnet50v2_sota", [0.9], [1e-4], 0.9)
    plain.metrics.update(cal(0.91, 0.69))
    smooth.metrics.update(cal(0.80, 0.61))
    c = claims.label_smoothing_calibrates([plain, smooth])
    assert c.verdict == "supported"
    assert c.evidence == (
        "mean confidence on wrong answers 0.690 -> 0.610; ECE 0.0100 -> 0.1000. resnet50v2_sota is "
        "under-confident: mean confidence 0.800 against accuracy 0.900."
    )


def test_label_smoothing_claim_is_judged_by_the_fitted_temperatures():
    """With temperatures fitted, over-confidence is measured by them (T > 1 over-confident): the verdict follows the
    temperatures even where the mean confidence on wrong answers points the other way."""

    def cal(wrong, t, ece_scaled):
        return {
            "calibration": {
                "mean_confidence": 0.9,
                "mean_confidence_wrong": wrong,
                "ece": 0.05,
                "temperature": t,
                "ece_scaled": ece_scaled,
            }
        }

    plain = _resnet("resnet50v2", [0.9], [1e-4], 0.9)
    smooth = _resnet("resnet50v2_sota", [0.9], [1e-4], 0.9)
    plain.metrics.update(cal(0.60, 1.40, 0.004))
    smooth.metrics.update(cal(0.70, 1.10, 0.006))  # wrong answers more confident, yet less over-confident overall
    c = claims.label_smoothing_calibrates([plain, smooth])
    assert (
        c.verdict == "supported"
        and "temperatures (T > 1: over-confident, T < 1: under-confident) 1.40 -> 1.10" in c.evidence
    )
    smooth.metrics.update(cal(0.50, 1.60, 0.006))
    assert claims.label_smoothing_calibrates([plain, smooth]).verdict == "contradicted"
    smooth.metrics.update(cal(0.50, 0.80, 0.006))
    c = claims.label_smoothing_calibrates([plain, smooth])
    assert c.verdict == "supported" and c.evidence.endswith("resnet50v2_sota is under-confident.")


def test_the_journey_curve_labels_sit_clear_of_their_line():
    """Above a peak and at the ends; elsewhere above and toward the lower neighbour: above-left on a rise and on a
    dip whose left neighbour is lower (the deep MLP's 50.3 -> 47.4 -> 74.1: clear of the steep rise), above-right on
    a fall. A stage without a measurement has no label to place and its neighbours count as ends."""
    values = [50.3, 47.4, 74.1, 77.1, 95.2, 93.8, 90.0, 92.0, None, 60.0]
    assert figures.label_positions(values) == [
        "top center",  # the first point
        "top left",  # a dip: 50.3 on the left is lower than 74.1 on the right
        "top left",  # rising
        "top left",
        "top center",  # a peak
        "top right",  # falling
        "top right",  # a dip: 92.0 on the right is lower than 93.8 on the left
        "top center",  # before a gap
        "top center",  # no value
        "top center",  # after a gap
    ]
    fig = figures.growth_curve(results.load_all())
    assert list(fig.data[1].textposition) == figures.label_positions(list(fig.data[1].y))
