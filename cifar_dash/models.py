"""Model builders, one per architecture. Every model takes raw uint8-valued 32x32x3 images and does its own
scaling / ImageNet preprocessing inside, so callers never preprocess (one input contract)."""

from __future__ import annotations

import keras
from keras import layers

from .data import NUM_CLASSES
from .layers import CaffePreprocess, ScaledBias


class BackboneWeightsError(RuntimeError):
    """ImageNet weights could be neither downloaded nor read from a local file."""


def _input():
    return keras.Input(shape=(32, 32, 3), name="image")


def _augment(x, specs, seed):
    for spec in specs:
        kind, _, arg = spec.partition(":")
        if kind == "flip":
            x = layers.RandomFlip("horizontal", seed=seed, name="aug_flip")(x)
        elif kind == "rotation":
            x = layers.RandomRotation(float(arg), fill_mode="reflect", seed=seed, name="aug_rotation")(x)
        elif kind == "zoom":
            x = layers.RandomZoom(float(arg), fill_mode="reflect", seed=seed, name="aug_zoom")(x)
        elif kind == "translation":
            f = float(arg)
            x = layers.RandomTranslation(f, f, fill_mode="reflect", seed=seed, name="aug_translation")(x)
        else:
            raise ValueError(f"unknown augmentation {spec!r}")
    return x


def _dense(units, name, activation="relu"):
    return layers.Dense(units, activation=activation, kernel_initializer="glorot_uniform", name=name)


def _classifier(x):
    return layers.Dense(NUM_CLASSES, activation="softmax", kernel_initializer="glorot_uniform", name="probs")(x)


def mlp(recipe, **_):
    inp = _input()
    x = layers.Rescaling(1 / 255, name="scale")(inp)
    x = layers.Flatten(name="flatten")(x)
    x = _dense(256, "dense_1")(x)
    x = _dense(128, "dense_2")(x)
    return keras.Model(inp, _classifier(x), name="mlp")


def deep_mlp(recipe, **_):
    inp = _input()
    x = layers.Rescaling(1 / 255, name="scale")(inp)
    x = layers.Flatten(name="flatten")(x)
    for i in range(4):
        x = _dense(512, f"dense_{i + 1}")(x)
    return keras.Model(inp, _classifier(x), name="deep_mlp")


def _conv_bn(x, filters, name):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def cnn(recipe, **_):
    inp = _input()
    x = _augment(inp, recipe.augmentation, recipe.seed)
    x = layers.Rescaling(1 / 255, name="scale")(x)
    for i, filters in enumerate((32, 64, 128)):
        x = _conv_bn(x, filters, f"block{i + 1}")
        x = layers.MaxPooling2D(name=f"block{i + 1}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = _dense(256, "fc")(x)
    x = layers.Dropout(0.5, name="dropout")(x)
    return keras.Model(inp, _classifier(x), name="cnn")


def vgg(recipe, **_):
    inp = _input()
    x = _augment(inp, recipe.augmentation, recipe.seed)
    x = layers.Rescaling(1 / 255, name="scale")(x)
    for i, filters in enumerate((32, 64, 128)):
        x = _conv_bn(x, filters, f"block{i + 1}a")
        x = _conv_bn(x, filters, f"block{i + 1}b")
        x = layers.MaxPooling2D(name=f"block{i + 1}_pool")(x)
        x = layers.Dropout(0.2 + 0.1 * i, name=f"block{i + 1}_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = _dense(256, "fc")(x)
    x = layers.Dropout(0.5, name="dropout")(x)
    return keras.Model(inp, _classifier(x), name="vgg_aug")


# CIFAR-10 training-set channel statistics (0..255 scale), for the from-scratch speedrun network
CIFAR_MEAN = (125.307, 122.950, 113.865)
CIFAR_STD = (62.993, 62.089, 66.705)


def _norm(x, recipe, name):
    """BatchNorm without scale; its bias trains ``recipe.norm_bias_lr_scale`` times faster (a ScaledBias) when >1."""
    scale = recipe.norm_bias_lr_scale
    if scale == 1.0:
        return layers.BatchNormalization(momentum=0.6, epsilon=1e-5, scale=False, name=name)(x)
    x = layers.BatchNormalization(momentum=0.6, epsilon=1e-5, center=False, scale=False, name=name)(x)
    return ScaledBias(scale**0.5, name=f"{name}_bias")(x)


def speedrun(recipe, **_):
    """A small fast network after airbench94 (Keller Jordan, 2024): a frozen 2x2 patch-whitening conv (set from the
    training images by ``init_from_data``), then three blocks of Conv-Pool-BN-GELU-Conv-BN-GELU (widths 64/256/256,
    BatchNorm without scale and with fast-training biases, convolutions identity-initialised in their first
    input-many filters), global max pool and a bias-free linear head scaled by 1/9."""
    inp = _input()
    x = _augment(inp, recipe.augmentation, recipe.seed)
    x = layers.Normalization(mean=CIFAR_MEAN, variance=[s * s for s in CIFAR_STD], name="normalize")(x)
    x = layers.Conv2D(2 * 3 * 2 * 2, 2, padding="valid", use_bias=True, trainable=False, name=WHITEN)(x)
    x = layers.Activation("gelu", name="stem_gelu")(x)
    convs = []
    for i, width in enumerate((64, 256, 256)):
        conv = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{i + 1}_conv1")
        x = conv(x)
        convs.append(conv)
        x = layers.MaxPooling2D(2, name=f"block{i + 1}_pool")(x)
        x = _norm(x, recipe, f"block{i + 1}_bn1")
        x = layers.Activation("gelu", name=f"block{i + 1}_gelu1")(x)
        conv = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{i + 1}_conv2")
        x = conv(x)
        convs.append(conv)
        x = _norm(x, recipe, f"block{i + 1}_bn2")
        x = layers.Activation("gelu", name=f"block{i + 1}_gelu2")(x)
    x = layers.GlobalMaxPooling2D(name="pool")(x)
    x = layers.Dense(NUM_CLASSES, use_bias=False, name="logits")(x)
    x = layers.Rescaling(1 / 9, name="logit_scale")(x)
    x = layers.Activation("softmax", name="probs", dtype="float32")(x)
    model = keras.Model(inp, x, name="speedrun")
    for conv in convs:  # an implicit residual: the first c_in filters start as the identity (Dirac) kernel
        kernel = keras.ops.convert_to_numpy(conv.kernel).copy()
        c_in = kernel.shape[2]
        kernel[:, :, :, :c_in] = 0.0
        kernel[1, 1, range(c_in), range(c_in)] = 1.0
        conv.kernel.assign(kernel)
    return model


WHITEN = "whiten"
FROZEN = (WHITEN,)  # layers that never train, whatever the phase


def whitening_kernel(images, eps: float = 5e-4):
    """2x2x3 -> 24 filters that whiten image patches: the eigenvectors of the patch covariance scaled by
    1/sqrt(eigenvalue + eps), largest first, each also negated (airbench's frozen first layer).
    ``images``: normalised float images (n, h, w, 3)."""
    import numpy as np

    x = np.asarray(images, dtype=np.float32)
    n, h, w, c = x.shape
    patches = np.stack([x[:, i : h - 1 + i, j : w - 1 + j, :] for i in (0, 1) for j in (0, 1)], axis=3)
    flat = patches.reshape(-1, 2, 2, c).reshape(-1, 4 * c).astype(np.float64)  # (h, w, c) order = kernel order
    cov = flat.T @ flat / len(flat)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    order = np.argsort(eigenvalues)[::-1]
    scaled = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + eps)
    kernel = np.concatenate([scaled, -scaled], axis=1).reshape(2, 2, c, 8 * c)
    return kernel.astype(np.float32)


def init_from_data(model, x_train, n: int = 5000) -> None:
    """Data-dependent initialisation before the first epoch: the whitening conv, where the model has one."""
    try:
        layer = model.get_layer(WHITEN)
    except ValueError:
        return
    import numpy as np

    normalize = model.get_layer("normalize")
    images = keras.ops.convert_to_numpy(normalize(np.asarray(x_train[:n], dtype=np.float32))).astype(np.float32)
    layer.kernel.assign(whitening_kernel(images))
    layer.bias.assign(np.zeros(layer.bias.shape, dtype=np.float32))


def flops_per_image(model) -> int:
    """Forward-pass floating-point operations for one image (2 x multiply-adds of Conv2D, DepthwiseConv2D and Dense
    layers, nested models included). Training costs about three times this per image."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += flops_per_image(layer)
            continue
        kind = layer.__class__.__name__
        if kind not in ("Conv2D", "DepthwiseConv2D", "Dense"):
            continue
        out = layer.output.shape
        kernel = layer.kernel.shape
        if kind == "Dense":
            total += 2 * kernel[0] * kernel[1]
        elif kind == "Conv2D":
            total += 2 * kernel[0] * kernel[1] * kernel[2] * kernel[3] * out[1] * out[2]
        else:  # depthwise: one kernel per input channel (times the depth multiplier)
            total += 2 * kernel[0] * kernel[1] * kernel[2] * kernel[3] * out[1] * out[2]
    return int(total)


# the environment variable that names a local ImageNet weights file, per backbone
BACKBONE_WEIGHT_ENV = {
    "mobilenetv2": "CIFAR_DASH_MOBILENETV2_WEIGHTS",
    "resnet50v2": "CIFAR_DASH_RESNET50V2_WEIGHTS",
    "resnet50": "CIFAR_DASH_RESNET50_WEIGHTS",
}

_APPLICATIONS = {
    "mobilenetv2": lambda shape, weights: keras.applications.MobileNetV2(
        input_shape=shape, alpha=1.0, include_top=False, weights=weights
    ),
    "resnet50v2": lambda shape, weights: keras.applications.ResNet50V2(
        input_shape=shape, include_top=False, weights=weights
    ),
    "resnet50": lambda shape, weights: keras.applications.ResNet50(input_shape=shape, include_top=False, weights=weights),
}


def backbone(name: str, side: int, weights="imagenet"):
    """An ImageNet backbone. ``weights``: "imagenet" (Keras download), a local .weights.h5/.h5 path, or None."""
    shape = (side, side, 3)
    try:
        return _APPLICATIONS[name](shape, weights)
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}") from None
    except Exception as e:
        raise BackboneWeightsError(
            f"could not load {name} ImageNet weights from {weights!r} ({type(e).__name__}: {e}). "
            f"Pass --backbone-weights PATH or set {BACKBONE_WEIGHT_ENV.get(name, 'the backbone weights variable')}."
        ) from e


def _preprocess(name, x):
    if name == "resnet50":
        return CaffePreprocess(name="imagenet_preprocess", dtype="float32")(x)
    # mobilenet_v2 and resnet_v2 preprocess_input: scale to [-1, 1]
    return layers.Rescaling(1 / 127.5, offset=-1.0, name="imagenet_preprocess")(x)


def transfer(recipe, backbone_weights="imagenet", **_):
    """ImageNet backbone on upsampled CIFAR; the head depends on the backbone's size (MobileNetV2 gets the seed's
    Dense(128) head of about 164 k parameters, ResNet a dropout + linear head)."""
    name = recipe.backbone
    factor = recipe.backbone_input // 32
    base = backbone(name, recipe.backbone_input, backbone_weights)
    base.name = "backbone"
    inp = _input()
    x = _augment(inp, recipe.augmentation, recipe.seed)
    x = layers.UpSampling2D(size=factor, interpolation=recipe.interpolation, name="upsample")(x)
    x = _preprocess(name, x)
    x = base(x, training=None if recipe.backbone_bn_training else False)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if name == "mobilenetv2":
        x = _dense(128, "head_dense")(x)
        x = layers.Dropout(0.5, name="head_dropout")(x)
    else:
        x = layers.Dropout(0.3, name="head_dropout")(x)
    return keras.Model(inp, _classifier(x), name=f"{name}_transfer")


def walk(model):
    """Every layer of a model, nested models included (Keras' public ``layers``, recursively)."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from walk(layer)


def set_trainable(model, trainable: str, bn_trainable: bool = True) -> None:
    """Apply a Phase.trainable spec: "all", "head" or "from:LAYER" (backbone layers from LAYER on train).

    With ``bn_trainable=False`` the backbone's BatchNormalization layers stay frozen even where the backbone trains:
    a trainable Keras 3 BatchNormalization normalises with batch statistics during fit, which shifts ImageNet features
    under small batches (the Keras transfer-learning guide keeps them frozen for fine-tuning)."""
    try:
        base = model.get_layer("backbone")
    except ValueError:
        base = None
    if base is None or trainable == "all":
        model.trainable = True
        for layer in model.layers:
            if layer.name in FROZEN:
                layer.trainable = False
        if base is not None:
            _freeze_bn(base, bn_trainable)
        return
    model.trainable = True
    if trainable == "head":
        base.trainable = False
        return
    if not trainable.startswith("from:"):
        raise ValueError(f"unknown trainable spec {trainable!r}")
    first = trainable[5:]
    names = [layer.name for layer in base.layers]
    if first not in names:
        raise ValueError(f"backbone has no layer {first!r}")
    start = names.index(first)
    base.trainable = True
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= start
    _freeze_bn(base, bn_trainable)


def _freeze_bn(base, bn_trainable):
    if not bn_trainable:
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = False


def count_params(model) -> tuple[int, int]:
    import math

    total = sum(math.prod(w.shape) for w in model.weights)
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    return int(total), int(trainable)
