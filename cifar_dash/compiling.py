"""A model compiled for one phase of its recipe: the optimizer (with the recipe's schedule) and the loss."""

from __future__ import annotations

import keras

from . import models, stages
from .keras_workarounds import allow_jit
from .layers import LookaheadSGD, TriangularSchedule


def make_optimizer(recipe: stages.Recipe, learning_rate, steps_per_epoch: int = 1, total_steps: int = 1):
    if recipe.optimizer == "sgd_nesterov" and recipe.lookahead:
        start_epoch, base, power, every = recipe.lookahead
        return LookaheadSGD(
            learning_rate,
            momentum=recipe.momentum,
            nesterov=True,
            weight_decay=recipe.weight_decay or None,
            start_step=int(start_epoch * steps_per_epoch),
            total_steps=total_steps,
            every=int(every),
            base=base,
            power=power,
        )
    if recipe.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate)
    if recipe.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "sgd_nesterov":
        return keras.optimizers.SGD(
            learning_rate, momentum=recipe.momentum, nesterov=True, weight_decay=recipe.weight_decay or None
        )
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def compile_for_phase(model, recipe, phase, steps_per_epoch):
    models.set_trainable(model, phase.trainable, bn_trainable=recipe.backbone_bn_training)
    allow_jit(model)  # else one augmentation layer leaves a JAX train step uncompiled
    lr = phase.learning_rate
    if recipe.lr_schedule == "onecycle":
        peak_at, start, end = recipe.onecycle
        lr = TriangularSchedule(phase.learning_rate, steps_per_epoch * phase.epochs, warmup=peak_at, start=start, end=end)
    model.compile(
        optimizer=make_optimizer(recipe, lr, steps_per_epoch, steps_per_epoch * phase.epochs),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=["accuracy"],
        jit_compile=True if recipe.jit_compile else "auto",
    )
