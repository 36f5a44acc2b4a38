"""The plateau rule (plateau.py) and its training callback (callbacks.PlateauRule), held against Keras' own
ReduceLROnPlateau, with which the shipped ResNet runs trained."""

import keras
import numpy as np
import pytest

from cifar_dash import callbacks, plateau


def _model(rate=1e-3):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(rate), loss="mse")
    return model


def _rate(model):
    return float(np.asarray(model.optimizer.learning_rate))


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_the_rule_lowers_the_rate_at_the_epochs_keras_own_callback_does(patience):
    """120 epoch ends of validation accuracies with rises, ties and rises smaller than min_delta (1e-4), at a rate
    that reaches the 1e-7 floor: the rule and Keras' callback (as the recipes configure it) give the same rate after
    every epoch."""
    rng = np.random.default_rng(patience)
    accuracies = np.round(np.cumsum(rng.choice([0.0, 0.0, 5e-5, 0.01, -0.01], 120)) + 0.5, 5).tolist()
    theirs = _model()
    keras_cb = keras.callbacks.ReduceLROnPlateau(
        monitor="val_accuracy", mode="max", factor=0.1, patience=patience, min_lr=plateau.MIN_LR, verbose=0
    )
    keras_cb.set_model(theirs)
    keras_cb.on_train_begin()
    ours = _model()
    rule = callbacks.PlateauRule(lambda: [], 1e-3, 0.1, patience)
    rule.set_model(ours)
    expected, got = [], []
    for epoch, accuracy in enumerate(accuracies):
        keras_cb.on_epoch_end(epoch, {"val_accuracy": accuracy})
        rule.on_epoch_begin(epoch)
        rule.on_epoch_end(epoch, {"val_accuracy": accuracy})
        expected.append(_rate(theirs))
        got.append(_rate(ours))
    assert len(set(expected)) > 3 and min(expected) == pytest.approx(plateau.MIN_LR)  # it acted, down to the floor
    assert got == pytest.approx(expected, rel=1e-6)
    memory, rate = plateau.fold(
        [{"val_accuracy": a, "learning_rate": r} for a, r in zip(accuracies, [1e-3, *expected[:-1]])], 1e-3, 0.1, patience
    )
    assert rate == pytest.approx(expected[-1], rel=1e-6) and memory.best == pytest.approx(keras_cb.best)
    assert memory.wait == keras_cb.wait


def test_fold_counts_from_the_phase_rate_and_the_logged_rates():
    assert plateau.fold([], 1e-3, 0.5, 1) == (plateau.Memory(None, 0), 1e-3)
    rows = [{"val_accuracy": a, "learning_rate": r} for a, r in [(0.5, 1e-3), (0.6, 1e-3), (0.6, 1e-3)]]
    assert plateau.fold(rows, 1e-3, 0.5, 1) == (plateau.Memory(0.6, 0), 5e-4)
    assert plateau.fold(rows, 1e-3, 0.5, 2) == (plateau.Memory(0.6, 1), 1e-3)
    assert plateau.fold(rows[:2], 1e-3, 0.5, 1) == (plateau.Memory(0.6, 0), 1e-3)  # improving: no change


def test_a_resumed_phase_starts_from_the_memory_of_its_finished_epochs():
    """Resumed at epoch 2 after epochs 0-1 (best 0.6): a worse third epoch halves the rate (patience 1); a run that
    forgot its memory would take 0.5 as its first best and keep the rate."""
    rows = [{"epoch": 0, "val_accuracy": 0.6, "learning_rate": 1e-3}, {"epoch": 1, "val_accuracy": 0.6}]
    model = _model()
    rule = callbacks.PlateauRule(lambda: rows, 1e-3, 0.5, 1)
    rule.set_model(model)
    rule.on_epoch_begin(2)
    assert rule.memory == plateau.Memory(0.6, 0)
    rule.on_epoch_end(2, {"val_accuracy": 0.5})
    assert _rate(model) == pytest.approx(5e-4)
    fresh = _model()
    rule = callbacks.PlateauRule(lambda: [], 1e-3, 0.5, 1)
    rule.set_model(fresh)
    rule.on_epoch_begin(0)
    rule.on_epoch_end(0, {"val_accuracy": 0.5})
    assert _rate(fresh) == pytest.approx(1e-3)
    rule.on_epoch_end(1, {})  # no validation accuracy: nothing to react to
    assert _rate(fresh) == pytest.approx(1e-3)


def test_a_continuation_goes_on_at_the_rate_its_phase_reached():
    """Two phases of 2 and 3 epochs. A run stopped after 4 epochs goes on inside the second phase: under the plateau
    rule at the rate its two epochs there lead to (0.6 then 0.5 with patience 1: halved), under a constant schedule at
    the last rate logged. Stopped at a phase boundary (2 or 5 epochs), it starts a phase afresh: None."""
    from cifar_dash.stages import Phase, Recipe

    phases = (Phase("head", 2, 1e-2), Phase("fine", 3, 1e-3))
    history = [
        {"epoch": 1, "val_accuracy": 0.3, "learning_rate": 1e-2},
        {"epoch": 2, "val_accuracy": 0.4, "learning_rate": 1e-2},
        {"epoch": 3, "val_accuracy": 0.6, "learning_rate": 1e-3},
        {"epoch": 4, "val_accuracy": 0.5, "learning_rate": 1e-3},
    ]
    on_plateau = Recipe(phases, lr_schedule="reduce_on_plateau", plateau_factor=0.5, plateau_patience=1)
    assert plateau.continued_rate(on_plateau, history, 4) == pytest.approx(5e-4)
    assert plateau.continued_rate(Recipe(phases, plateau_patience=2), history, 4) == pytest.approx(1e-3)
    logged = [*history[:3], {"epoch": 4, "val_accuracy": 0.5, "learning_rate": 7e-4}]
    assert plateau.continued_rate(Recipe(phases), logged, 4) == pytest.approx(7e-4)
    assert plateau.continued_rate(on_plateau, history, 2) is None
    assert plateau.continued_rate(on_plateau, history[:3], 3) == pytest.approx(1e-3)  # one epoch in: no wait yet
