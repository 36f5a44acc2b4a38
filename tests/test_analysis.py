"""analysis: the Journey page's comparisons between stages."""

import numpy as np
import pytest

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


def test_weighted_vote_a_tie_of_weak_stages_never_marks_the_strong_ones():
    """The rocket case: three weak stages say airplane, three strong ones say ship; a head count ties 3-3."""

    def p(c, conf):
        row = np.full(10, (1 - conf) / 9)
        row[c] = conf
        return row

    weak = {"mlp": 0.50, "deep_mlp": 0.47, "cnn": 0.74}
    strong = {"resnet50v2": 0.95, "resnet50v2_sota": 0.95, "speedrun": 0.94}
    probs = {k: p(0, 0.6) for k in weak} | {k: p(8, 0.6) for k in strong}
    v = analysis.weighted_vote(probs, weak | strong)
    # by hand: airplane (0.4 + 0.37 + 0.64) * 0.6 + ...; ship (0.85 + 0.85 + 0.84) * 0.6 + ...
    w = {k: a - 0.1 for k, a in (weak | strong).items()}
    ship = (sum(w[k] for k in strong) * 0.6 + sum(w[k] for k in weak) * 0.4 / 9) / sum(w.values())
    assert v["answer"] == 8 and v["probability"] == pytest.approx(ship)
    assert sorted(v["differs"]) == sorted(weak)  # the weak ones differ from the answer, the strong ones never
    # weak stages sure of themselves can outvote one unsure strong stage, which is then not marked either
    v = analysis.weighted_vote({"mlp": p(0, 0.99), "cnn": p(0, 0.99), "resnet50v2": p(8, 0.3)}, weak | strong)
    assert v["answer"] == 0 and v["differs"] == []
    assert analysis.weighted_vote({}, {})["answer"] is None
