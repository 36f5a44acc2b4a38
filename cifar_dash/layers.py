"""Custom layers that saved models refer to; importing cifar_dash registers them."""

from __future__ import annotations

import keras
from keras import ops

# ImageNet channel means in BGR order, as keras.applications.resnet50.preprocess_input ("caffe" mode) uses them.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="cifar_dash")
class CaffePreprocess(keras.layers.Layer):
    """RGB 0..255 -> BGR minus the ImageNet mean: ResNet50 (v1) preprocess_input inside the model."""

    def call(self, x):
        x = ops.flip(ops.cast(x, self.compute_dtype), axis=-1)
        return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=self.compute_dtype)


@keras.saving.register_keras_serializable(package="cifar_dash")
class TriangularSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-linear one-cycle rate: from ``start * peak`` up to ``peak`` over the first ``warmup`` fraction of
    ``total_steps``, then down to ``end * peak`` at the last step (the shape fast CIFAR-10 training uses)."""

    def __init__(self, peak, total_steps, warmup=0.2, start=0.0, end=0.0):
        self.peak, self.total_steps, self.warmup = float(peak), int(total_steps), float(warmup)
        self.start, self.end = float(start), float(end)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        up = max(self.warmup * self.total_steps, 1.0)
        down = max(self.total_steps - up, 1.0)
        rise = self.start + (1.0 - self.start) * step / up
        fall = self.end + (1.0 - self.end) * (self.total_steps - step) / down
        return self.peak * ops.maximum(ops.minimum(rise, fall), 0.0)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup": self.warmup,
            "start": self.start,
            "end": self.end,
        }


@keras.saving.register_keras_serializable(package="cifar_dash")
class ScaledBias(keras.layers.Layer):
    """``x + scale * b`` with a per-channel ``b``: the same function as a plain bias, but plain SGD moves it
    ``scale ** 2`` times faster (the gradient and the step are each ``scale`` times larger), while decoupled weight
    decay shrinks it at the same rate as every other weight. airbench94 trains its BatchNorm biases at 64x the rate
    through per-parameter learning rates; this reparametrisation (``scale=8``) does the same with one Keras
    optimizer."""

    def __init__(self, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def build(self, input_shape):
        self.b = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="b")

    def call(self, x):
        return x + ops.cast(self.b * self.scale, x.dtype)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


class _Untracked:
    """A plain holder: Keras tracks variables (and lists of them) assigned to an optimizer as its own state, and the
    model's weights must not become optimizer state (JAX would then be handed the same buffer twice)."""

    def __init__(self, items):
        self.items = list(items)


@keras.saving.register_keras_serializable(package="cifar_dash")
class LookaheadSGD(keras.optimizers.SGD):
    """SGD whose weights are pulled back towards a slow average every ``every`` steps (Lookahead with an EMA, as in
    airbench94): before ``start_step`` the average just follows the weights; from then on, at every ``every``-th
    step, ``avg = rho * avg + (1 - rho) * w`` and ``w = avg``, with ``rho = base ** every * (step / total) ** power``
    rising to ``base ** every`` at the end, so training moves fast early and averages strongly late. When training
    ends the weights take the average's value.

    Built on the public optimizer API only (``build``, ``apply``, ``finalize_variable_values``): the averages
    are optimizer variables (saved with its state, so BackupAndRestore resumes them), updated inside the compiled
    step, the same under TensorFlow, JAX and PyTorch."""

    def __init__(self, learning_rate=0.01, start_step=0, total_steps=1, every=5, base=0.95, power=3.0, **kwargs):
        for k in ("use_ema", "ema_overwrite_frequency", "ema_momentum"):
            kwargs.pop(k, None)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.start_step, self.total_steps, self.every = int(start_step), max(int(total_steps), 1), int(every)
        self.base, self.power = float(base), float(power)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.lookahead_targets = _Untracked(variables)  # the model's weights: referred to, not owned (see _Untracked)
        self.lookahead_averages = [self.add_variable_from_reference(v, "lookahead_average") for v in variables]

    def lookahead_rho(self, step):
        """The weight of the old average after optimizer step number ``step`` (1-based): 0 on the first step and
        before the start (the average follows the weights), 1 between lookahead steps (the average holds)."""
        step = ops.cast(step, "float32")
        scheduled = (self.base**self.every) * ops.power(step / self.total_steps, self.power)
        due = ops.equal(ops.mod(step, float(self.every)), 0.0)
        follow = ops.logical_or(step < self.start_step, ops.equal(step, 1.0))  # the average starts as the weights
        return ops.where(follow, 0.0, ops.where(due, scheduled, 1.0))

    def apply(self, grads, trainable_variables=None):
        super().apply(grads, trainable_variables)  # the SGD step; it ends by counting the step
        step = self.iterations
        rho = self.lookahead_rho(step)
        due = ops.equal(ops.mod(step, self.every), 0)
        for variable, average in zip(self.lookahead_targets.items, self.lookahead_averages):
            r = ops.cast(rho, variable.dtype)
            weights = ops.convert_to_tensor(variable)
            new_average = r * ops.convert_to_tensor(average) + (1.0 - r) * weights
            average.assign(new_average)
            variable.assign(ops.where(due, new_average, weights))

    def finalize_variable_values(self, var_list):
        super().finalize_variable_values(var_list)
        for variable, average in zip(self.lookahead_targets.items, self.lookahead_averages):
            variable.assign(ops.convert_to_tensor(average))

    def get_config(self):
        config = super().get_config()
        for k in ("use_ema", "ema_overwrite_frequency", "ema_momentum"):
            config.pop(k, None)
        config.update(
            start_step=self.start_step, total_steps=self.total_steps, every=self.every, base=self.base, power=self.power
        )
        return config
