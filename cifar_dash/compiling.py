"""A model compiled for one phase of its recipe: the optimizer (with the recipe's schedule) and the loss."""

from __future__ import annotations

import keras

from . import models, stages
from .keras_workarounds import allow_jit
from .layers import LookaheadSGD, TriangularSchedule


def compile_for_phase(model, recipe: stages.Recipe, phase, steps_per_epoch: int):
    """Phase ``phase`` of ``recipe``: its trainable layers, then the recipe's optimizer at the phase's rate (or the
    one-cycle schedule over the phase's steps) and the loss."""
    models.set_trainable(model, phase.trainable, bn_trainable=recipe.backbone_bn_training)
    allow_jit(model)  # else one augmentation layer leaves a JAX train step uncompiled
    lr, total_steps = phase.learning_rate, steps_per_epoch * phase.epochs
    if recipe.lr_schedule == "onecycle":
        peak_at, start, end = recipe.onecycle
        lr = TriangularSchedule(phase.learning_rate, total_steps, warmup=peak_at, start=start, end=end)
    decay = recipe.weight_decay or None
    if recipe.optimizer == "sgd_nesterov" and recipe.lookahead:
        start_epoch, base, power, every = recipe.lookahead
        optimizer = LookaheadSGD(
            lr,
            momentum=recipe.momentum,
            nesterov=True,
            weight_decay=decay,
            start_step=int(start_epoch * steps_per_epoch),
            total_steps=total_steps,
            every=int(every),
            base=base,
            power=power,
        )
    elif recipe.optimizer == "adam":
        optimizer = keras.optimizers.Adam(lr)
    elif recipe.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(lr, weight_decay=recipe.weight_decay)
    elif recipe.optimizer == "sgd_nesterov":
        optimizer = keras.optimizers.SGD(lr, momentum=recipe.momentum, nesterov=True, weight_decay=decay)
    else:
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}")
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=["accuracy"],
        jit_compile=True if recipe.jit_compile else "auto",
    )
