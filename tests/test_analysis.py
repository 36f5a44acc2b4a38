"""analysis: the Journey page's comparisons between stages."""

from cifar_dash import analysis, results, stages


def _r(key, acc, epochs=None, status="trained"):
    stage = stages.get(key)
    if status != "trained":
        return results.StageResult(stage, status)
    return results.StageResult(stage, "trained", metrics={"test_accuracy": acc, "epochs": epochs or stage.recipe.epochs})


def test_order_inversions_names_a_stage_measured_under_one_the_seed_reports_below_it():
    pair = [_r("resnet50v2", 0.9516, 5), _r("resnet50v2_sota", 0.9463, 3)]
    (note,) = analysis.order_inversions(pair)
    assert note.startswith(
        "resnet50v2_sota measures 94.63% (3 of its recipe's 5 epochs), 0.53 points under "
        "resnet50v2's 95.16% (5 of its recipe's 5 epochs), though the seed reports it 0.48 points "
        "above (94.38% against 93.90%)."
    )
    assert "different numbers of epochs" in note
    # full recipes on both sides: the note says the order itself did not reproduce
    (full,) = analysis.order_inversions([_r("resnet50v2", 0.95), _r("resnet50v2_sota", 0.94)])
    assert "Both ran their recipes' full epochs" in full
    (short,) = analysis.order_inversions([_r("resnet50v2", 0.95, 3), _r("resnet50v2_sota", 0.94, 3)])
    assert "Both stopped short of their recipes' epochs" in short


def test_order_inversions_ignore_expected_drops_agreeing_orders_and_missing_stages():
    # deep_mlp is reported below mlp: measuring it below is the seed's point, not an inversion
    assert analysis.order_inversions([_r("mlp", 0.50), _r("deep_mlp", 0.47)]) == []
    assert analysis.order_inversions([_r("resnet50v2", 0.93), _r("resnet50v2_sota", 0.94)]) == []
    assert analysis.order_inversions([_r("resnet50v2", 0.95), _r("resnet50v2_sota", None, status="untrained")]) == []
    # only consecutive stages are compared: cnn under resnet50v2 with a stage in error between them is not flagged
    assert analysis.order_inversions([_r("cnn", 0.74), _r("vgg_aug", None, status="damaged"), _r("resnet50v2", 0.70)]) == []


def test_probably_unknown_needs_disagreement_and_low_confidence():
    import numpy as np

    def p(cls, conf):
        row = np.full(10, (1 - conf) / 9)
        row[cls] = conf
        return row[None]

    strongest = ["a", "b", "c"]
    assert not analysis.probably_unknown({"a": p(1, 0.4), "b": p(1, 0.4), "c": p(1, 0.4)}, strongest)[0]  # agree
    assert not analysis.probably_unknown({"a": p(1, 0.9), "b": p(2, 0.8), "c": p(1, 0.7)}, strongest)[0]  # sure
    assert analysis.probably_unknown({"a": p(1, 0.5), "b": p(2, 0.5), "c": p(1, 0.6)}, strongest)[0]
    # only the strongest stages count; a weak stage's disagreement changes nothing
    assert not analysis.probably_unknown({"a": p(1, 0.5), "b": p(1, 0.5), "c": p(1, 0.5), "w": p(3, 0.2)}, strongest)[0]


def test_unknown_rate_on_the_shipped_test_predictions():
    from cifar_dash import results
    from tests.conftest import ROOT

    res = results.load_all(ROOT / "checkpoints")
    keys = analysis.strongest_stages(res)
    assert keys == ["resnet50v2_sota", "resnet50v2", "speedrun"]
    preds = {k: results.predictions(k, ROOT / "checkpoints") for k in keys}
    rate, n = analysis.unknown_rate_on_test(preds, keys)
    probs = {k: preds[k].probs for k in keys}  # the shipped files share one test order
    assert n == 10_000 and rate == float(analysis.probably_unknown(probs, keys).mean())
    assert rate < 0.05  # fires on few real CIFAR-10 test images
