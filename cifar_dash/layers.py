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
