"""The none-of-these-classes detector: its score, its fit, its files, and the shipped detector's measured rates."""

import json

import numpy as np
import pytest

from cifar_dash import artifacts, ood
from tests.conftest import ROOT


def _clusters(n, centres, rng, spread=0.3):
    c = centres[rng.integers(0, len(centres), n)]
    return c + spread * rng.normal(size=c.shape)


def test_knn_score_is_one_minus_the_cosine_to_the_kth_neighbour():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
    got = ood.knn_score(ood.normalise(bank), queries, k=3)
    for q, s in zip(queries, got):  # by hand, one query at a time
        cos = sorted((q @ b) / (np.linalg.norm(q) * np.linalg.norm(b)) for b in bank)
        assert s == pytest.approx(1 - cos[-3], abs=1e-5)


def test_fit_sets_the_threshold_on_validation_only_and_measures_the_rates():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(10, 32)) * 3
    bank, val, test = (_clusters(n, centres, rng) for n in (500, 400, 1000))
    far_away = rng.normal(size=(60, 32)) * 3  # pictures of something else: no cluster of the bank
    half = np.array(["selection", "evaluation"] * 30)
    record, bank_norm = ood.fit(bank, val, test, {"other": far_away}, {"other": half})
    b = bank_norm.astype(np.float32)
    val_scores = ood.knn_score(b, val)
    assert record["threshold"] == pytest.approx(float(np.quantile(val_scores, ood.QUANTILE)))
    assert record["false_alarm_rate"] == pytest.approx(float((ood.knn_score(b, test) > record["threshold"]).mean()))
    assert record["false_alarm_rate"] < 0.1 and record["n_test"] == 1000
    flagged = ood.knn_score(b, far_away) > record["threshold"]
    assert record["sets"]["other"]["detection_rate_evaluation"] == pytest.approx(flagged[half == "evaluation"].mean())
    assert record["detection_rate_evaluation"] > 0.9 and record["n_evaluation"] == 30
    # the threshold does not move when the non-CIFAR pictures change: they never tune it
    again, _ = ood.fit(bank, val, test, {"other": far_away[:10]}, {"other": half[:10]})
    assert again["threshold"] == record["threshold"]


def test_a_missing_or_damaged_detector_says_how_to_fit_it(tmp_path):
    with pytest.raises(artifacts.ArtifactError, match="python -m cifar_dash calibrate"):
        ood.load(tmp_path)
    (tmp_path / ood.OOD_JSON).write_text("{not json")
    np.savez(tmp_path / ood.BANK_FILE, bank=np.ones((3, 4), np.float16))
    with pytest.raises(artifacts.ArtifactError, match="calibrate"):
        ood.load(tmp_path)
    (tmp_path / ood.OOD_JSON).write_text(json.dumps({"threshold": "high"}))
    with pytest.raises(artifacts.ArtifactError, match="damaged"):
        ood.load(tmp_path)


def test_the_offline_picture_sets_and_their_sources():
    sets = ood.load_sets()
    assert {"objects", "photos", "text"} <= set(sets)
    for s in sets.values():
        assert s["x"].dtype == np.uint8 and s["x"].shape[1:] == (32, 32, 3) and len(s["x"]) == s["n"]
        assert len(s["names"]) == len(s["licences"]) == s["n"] and set(s["half"]) == {"selection", "evaluation"}
    assert not any("chelsea" in n or "/animals/" in n or "/vehicles/" in n for s in sets.values() for n in s["names"])


def test_the_shipped_detector_meets_its_targets_on_the_shipped_files():
    """checkpoints/ood.json as `calibrate` wrote it: at most 5% false alarms on the 10,000 test images, at least 90%
    of the held-out non-CIFAR pictures flagged, and its bank is what the record says."""
    det = ood.load(ROOT / "checkpoints")
    r = det.record
    assert r["method"] == "knn" and r["stage"] == ood.STAGE and r["n_test"] == 10_000
    assert r["false_alarm_rate"] <= 0.05 and r["detection_rate_evaluation"] >= 0.9
    assert det.bank.shape == (r["bank_size"], 1280)
    assert np.allclose(np.linalg.norm(det.bank, axis=1), 1, atol=1e-2)
    sets = ood.load_sets()
    assert r["n_evaluation"] == sum(int((s["half"] == "evaluation").sum()) for s in sets.values())
