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


@keras.saving.register_keras_serializable(package="cifar_dash")
class LookaheadSGD(keras.optimizers.SGD):
    """SGD whose weights are pulled back towards a slow average every ``every`` steps (Lookahead with an EMA, as in
    airbench94): before ``start_step`` the average just follows the weights; from then on, at every ``every``-th
    step, ``avg = rho * avg + (1 - rho) * w`` and ``w = avg``, with ``rho = base ** every * (step / total) ** power``
    rising to ``base ** every`` at the end, so training moves fast early and averages strongly late.

    It is built on Keras's own EMA hooks (``use_ema`` / ``ema_overwrite_frequency``), inside the optimizer step, so
    it behaves the same under TensorFlow, JAX and PyTorch."""

    def __init__(self, learning_rate=0.01, start_step=0, total_steps=1, every=5, base=0.95, power=3.0, **kwargs):
        kwargs.pop("use_ema", None)
        kwargs.pop("ema_overwrite_frequency", None)
        super().__init__(learning_rate=learning_rate, use_ema=True, ema_overwrite_frequency=int(every), **kwargs)
        self.start_step, self.total_steps, self.every = int(start_step), max(int(total_steps), 1), int(every)
        self.base, self.power = float(base), float(power)

    def lookahead_rho(self, step):
        """The weight of the old average after optimizer step number ``step`` (1-based): 0 on the first step and
        before the start (the average follows the weights), 1 between lookahead steps (the average holds)."""
        step = ops.cast(step, "float32")
        scheduled = (self.base**self.every) * ops.power(step / self.total_steps, self.power)
        due = ops.equal(ops.mod(step, float(self.every)), 0.0)
        follow = ops.logical_or(step < self.start_step, ops.equal(step, 1.0))  # the average starts as the weights
        return ops.where(follow, 0.0, ops.where(due, scheduled, 1.0))

    def _update_model_variables_moving_average(self, trainable_variables):
        rho = self.lookahead_rho(self.iterations + 1)
        for var, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                r = ops.cast(rho, var.dtype)
                average.assign(r * average + (1.0 - r) * var)

    def get_config(self):
        config = super().get_config()
        for k in ("use_ema", "ema_overwrite_frequency", "ema_momentum"):
            config.pop(k, None)
        config.update(
            start_step=self.start_step, total_steps=self.total_steps, every=self.every, base=self.base, power=self.power
        )
        return config
