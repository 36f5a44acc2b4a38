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
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup": self.warmup, "start": self.start,
                "end": self.end}
