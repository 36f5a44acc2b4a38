"""The recipes' plateau rule (``lr_schedule="reduce_on_plateau"``): multiply the learning rate by ``factor`` when the
validation accuracy has not improved by more than 1e-4 for ``patience`` epochs. It is Keras' ``ReduceLROnPlateau`` as
the ResNet recipes use it (monitor val_accuracy, mode max, no cooldown, min_lr 1e-7; the shipped runs trained with
Keras' callback), written out here so that its memory (best, wait) is plain data of this project's: the training
callback (``callbacks.PlateauRule``) steps it at each epoch end, and a resumed or continued run folds it over the
epochs its log already holds (``continued_rate``: the rate a continuation goes on at). tests/test_plateau.py holds it
against Keras' own callback. No Keras here."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MIN_DELTA = 1e-4
MIN_LR = 1e-7


class Memory(NamedTuple):
    best: float | None = None  # the best validation accuracy so far (None before the first epoch)
    wait: int = 0  # epochs since it last improved


def step(memory: Memory, accuracy: float, rate: float, factor: float, patience: int) -> tuple[Memory, float]:
    """One epoch end: the memory after an epoch that reached ``accuracy`` at ``rate``, and the next epoch's rate."""
    if memory.best is None or accuracy - MIN_DELTA > memory.best:
        return Memory(accuracy, 0), rate
    wait = memory.wait + 1
    if wait < patience:
        return Memory(memory.best, wait), rate
    if rate > np.float32(MIN_LR):  # Keras compares with the float32 minimum, and counts on at the minimum
        return Memory(memory.best, 0), max(rate * factor, MIN_LR)
    return Memory(memory.best, wait), rate


def fold(rows, rate: float, factor: float, patience: int) -> tuple[Memory, float]:
    """The memory and next rate after the finished epochs ``rows`` of one phase (history rows: ``val_accuracy`` and
    the ``learning_rate`` the epoch ran at), starting at the phase's ``rate``."""
    memory, rate = Memory(), float(rate)
    for row in rows:
        rate = float(row.get("learning_rate", rate))
        memory, rate = step(memory, row["val_accuracy"], rate, factor, patience)
    return memory, rate


def continued_rate(recipe, history: list, done: int) -> float | None:
    """The rate a continuation of a run with ``done`` epochs (its ``history`` rows) starts at when it goes on inside a
    phase of ``recipe``: the plateau rule's next rate after that phase's epochs so far, or the last rate logged under
    other schedules. None when it starts a phase afresh."""
    start = 0
    for phase in recipe.phases:
        end = start + phase.epochs
        if start < done < end:
            rows = [r for r in history if start < r["epoch"] <= done]
            if recipe.lr_schedule == "reduce_on_plateau":
                return fold(rows, phase.learning_rate, recipe.plateau_factor, recipe.plateau_patience)[1]
            return rows[-1].get("learning_rate", phase.learning_rate)
        start = end
    return None
