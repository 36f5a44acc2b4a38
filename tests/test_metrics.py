import numpy as np
import pytest

from cifar_dash import metrics


def test_confusion_matrix_matches_hand_count():
    y_true = [0, 0, 1, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 1, 1, 1, 0, 2, 2, 1, 2]
    cm = metrics.confusion_matrix(y_true, y_pred, num_classes=3)
    # counted by hand: row = true, column = predicted
    assert cm.tolist() == [[1, 1, 0], [1, 2, 0], [0, 1, 3]]


def test_per_class_precision_recall_f1_by_hand():
    cm = np.array([[1, 1, 0], [1, 2, 0], [0, 1, 3]])
    rows = metrics.per_class(cm)
    # class 1: tp 2, predicted 4, actual 3
    assert rows[1]["precision"] == pytest.approx(2 / 4)
    assert rows[1]["recall"] == pytest.approx(2 / 3)
    assert rows[1]["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert rows[2]["precision"] == pytest.approx(1.0) and rows[2]["support"] == 4


def test_summarize_accuracy():
    probs = np.eye(10)[[0, 1, 2, 3]]
    out = metrics.summarize(probs, [0, 1, 2, 0])
    assert out["test_accuracy"] == 0.75 and out["n_test"] == 4
    assert out["confusion_matrix"][3][3] == 0 and out["confusion_matrix"][0][3] == 1


def test_summary_line_states_the_figures_and_the_temperature_when_one_was_fit():
    result = {
        "stage": "cnn",
        "test_accuracy": 0.81234,
        "n_test": 10000,
        "calibration": {"ece": 0.04321},
        "inference": {"batch_1_ms": 3.456},
    }
    assert metrics.summary_line(result) == (
        "cnn: test accuracy 0.8123 on 10000 images (ECE 0.0432, 3.5 ms/image at batch 1)"
    )
    result["calibration"].update(temperature=1.5, fit_on="validation", n_fit=5000, ece_scaled=0.0123)
    first, second = metrics.summary_line(result).split("\n")
    assert first.startswith("cnn: test accuracy 0.8123")
    assert second == "cnn: temperature 1.500 (fit on validation, 5,000 images); test ECE 0.0432 -> 0.0123"
