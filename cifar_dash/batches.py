"""The training batches: shuffled, optionally augmented (alternating flips, reflect-padded shifts) and MixUp-blended,
the same for a resumed run as for an uninterrupted one.

Every random decision (order, shifts, flips, MixUp pairs and weights) is drawn here in NumPy: a few numbers per
image. The pixels are moved under TensorFlow by a tf.data pipeline (``tf_dataset``: the epoch's decisions drawn in
one call, no Python per batch), under JAX as tensor ops on the device that holds the whole training set (one
compiled gather per batch), or in NumPy (``__getitem__``, the PyDataset other backends iterate). All give the same batches,
bit for bit."""

from __future__ import annotations

import math

import keras
import numpy as np

from .data import NUM_CLASSES


class Batches(keras.utils.PyDataset):
    """Shuffled mini-batches of raw images and one-hot (optionally MixUp-blended) labels, optionally augmented here
    in NumPy (``augment``: "flip_alternate", "crop:N"; see stages.Recipe.loader_augmentation). Every random choice
    comes from (seed, epoch, batch), so a resumed run sees the same batches as an uninterrupted one."""

    def __init__(self, x, y, batch_size, mixup_alpha=0.0, seed=0, augment=(), on_device=None):
        super().__init__()
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.mixup_alpha = mixup_alpha
        self.seed = seed
        self.flip = self.pad = None
        for spec in augment:
            kind, _, arg = spec.partition(":")
            if kind == "flip_alternate":
                self.flip = np.random.default_rng((seed, 7)).random(len(x)) < 0.5  # the first epoch's flips
            elif kind == "crop":
                self.pad = int(arg)
            else:
                raise ValueError(f"unknown loader augmentation {spec!r}")
        if self.pad:  # padded once, cropped per batch
            p = self.pad
            self.x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
        if on_device is None:  # under JAX, where there are pixels to move: one gather beats NumPy's per-batch copy
            # (speedrun batch of 1024 on a CPU: 3.9 ms against 17.9 ms); a plain or MixUp-only batch stays in NumPy,
            # which is faster for it than a few eager device ops (0.1-0.3 ms against 1.3-2.2 ms)
            on_device = keras.backend.backend() == "jax" and (bool(self.pad) or self.flip is not None)
        self.on_device = on_device
        if self.on_device:  # every pixel once, as one flat (images x rows x columns, channels) uint8 tensor
            self.x_device = keras.ops.convert_to_tensor(self.x.reshape(-1, self.x.shape[-1]))
            self._gather = _device_gather(*self.x.shape[1:3])
        self.set_epoch(0)

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def set_epoch(self, epoch):
        self.epoch = epoch
        self._order = np.random.default_rng((self.seed, epoch)).permutation(len(self.x))

    def on_epoch_end(self):
        pass  # Keras also calls this before the first epoch; EpochOrder sets the epoch from fit's own count

    def _pixels(self, idx, i):
        """Each image's rows and columns in the (padded) training set: the batch's shifts and flips."""
        p, n = self.pad or 0, len(idx)
        dy = dx = np.zeros(n, dtype=np.int64)
        if p:
            rng = np.random.default_rng((self.seed, self.epoch, i, 2))
            dy, dx = rng.integers(0, 2 * p + 1, size=(2, n))
        rows = dy[:, None] + np.arange(self.x.shape[1] - 2 * p)
        cols = dx[:, None] + np.arange(self.x.shape[2] - 2 * p)
        if self.flip is not None:
            flip = self.flip[idx] ^ bool(self.epoch % 2)
            cols = np.where(flip[:, None], cols[:, ::-1], cols)
        return rows, cols

    def _augmented(self, idx, i):
        if not self.pad and self.flip is None:
            return self.x[idx]
        rows, cols = self._pixels(idx, i)
        return self.x[idx[:, None, None], rows[:, :, None], cols[:, None, :]]

    def _augmented_on_device(self, idx, i):
        """The same pixels gathered on the device: one take from the flat training set."""
        rows, cols = self._pixels(idx, i)
        return self._gather(self.x_device, *(keras.ops.convert_to_tensor(a.astype("int32")) for a in (idx, rows, cols)))

    def __getitem__(self, i):
        idx = self._order[i * self.batch_size : (i + 1) * self.batch_size]
        if self.on_device:
            xb = self._augmented_on_device(idx, i)
        else:
            xb = self._augmented(idx, i).astype("float32")
        yb = np.eye(NUM_CLASSES, dtype="float32")[self.y[idx]]
        if self.mixup_alpha > 0:
            rng = np.random.default_rng((self.seed, self.epoch, i, 1))
            lam = rng.beta(self.mixup_alpha, self.mixup_alpha, size=(len(idx), 1)).astype("float32")
            perm = rng.permutation(len(idx))
            if self.on_device:
                w = keras.ops.convert_to_tensor(lam[:, :, None, None])
                xb = w * xb + (1 - w) * keras.ops.take(xb, keras.ops.convert_to_tensor(perm.astype("int32")), axis=0)
            else:
                xb = lam[:, :, None, None] * xb + (1 - lam[:, :, None, None]) * xb[perm]
            yb = lam * yb + (1 - lam) * yb[perm]
        return xb, yb

    def epoch_plan(self):
        """Every random decision of the current epoch, for all its batches at once, drawn exactly as ``__getitem__``
        draws them: image indices; each image's pixel rows and columns (shifts and flips; empty without them); MixUp
        weights and partners (a position in the same batch; empty without MixUp)."""
        n, h, w = len(self.x), self.x.shape[1] - 2 * (self.pad or 0), self.x.shape[2] - 2 * (self.pad or 0)
        aug, mix = bool(self.pad) or self.flip is not None, self.mixup_alpha > 0
        rows = np.empty((n if aug else 0, h), np.int32)
        cols = np.empty((n if aug else 0, w), np.int32)
        lam = np.empty((n if mix else 0, 1), np.float32)
        perm = np.empty(n if mix else 0, np.int32)
        for i in range(len(self)):
            part = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = self._order[part]
            if aug:
                rows[part], cols[part] = self._pixels(idx, i)
            if mix:
                rng = np.random.default_rng((self.seed, self.epoch, i, 1))
                lam[part] = rng.beta(self.mixup_alpha, self.mixup_alpha, size=(len(idx), 1))
                perm[part] = rng.permutation(len(idx))
        return self._order.astype(np.int32), rows, cols, lam, perm

    def tf_dataset(self):
        """Under TensorFlow, the same batches bit for bit as a ``tf.data`` pipeline: when an epoch's iterator starts
        (after EpochOrder set the epoch), one NumPy call draws the whole epoch's decisions (``epoch_plan``); the
        pixels are gathered, flipped, shifted and MixUp-blended by TensorFlow ops, so no Python runs per batch (the
        PyDataset route runs every batch through a Python generator, which stalls a small model's steps)."""
        import tensorflow as tf

        n, b, channels = len(self.x), self.batch_size, self.x.shape[-1]
        height, width = self.x.shape[1:3]
        aug, mix = bool(self.pad) or self.flip is not None, self.mixup_alpha > 0
        images = tf.constant(self.x.reshape(-1, channels) if aug else self.x)
        labels = tf.constant(np.asarray(self.y).reshape(-1).astype(np.int32))
        types = (tf.int32, tf.int32, tf.int32, tf.float32, tf.int32)

        def plan(_):
            parts = tf.numpy_function(self.epoch_plan, [], types, stateful=True)
            shapes = ([None], [None, None], [None, None], [None, 1], [None])
            for t, shape in zip(parts, shapes, strict=True):
                t.set_shape(shape)
            return tuple(parts)

        def batch(i, idx, rows, cols, lam, perm):
            part = slice(i * b, tf.minimum((i + 1) * b, n))
            idx = idx[part]
            if aug:
                r, c = rows[part], cols[part]
                flat = (idx[:, None, None] * height + r[:, :, None]) * width + c[:, None, :]
                xb = tf.cast(tf.gather(images, flat), tf.float32)
            else:
                xb = tf.cast(tf.gather(images, idx), tf.float32)
            yb = tf.one_hot(tf.gather(labels, idx), NUM_CLASSES, dtype=tf.float32)
            if mix:
                weight, partner = lam[part], perm[part]
                w = weight[:, :, None, None]
                xb = w * xb + (1 - w) * tf.gather(xb, partner)
                yb = weight * yb + (1 - weight) * tf.gather(yb, partner)
            return xb, yb

        def epoch(*parts):
            return tf.data.Dataset.range(len(self)).map(lambda i: batch(tf.cast(i, tf.int32), *parts))

        ds = tf.data.Dataset.range(1).map(plan).flat_map(epoch)
        return ds.apply(tf.data.experimental.assert_cardinality(len(self))).prefetch(tf.data.AUTOTUNE)


def _device_gather(height: int, width: int):
    """(flat uint8 training set, image indices, rows, columns) -> the float32 batch, one take of per-pixel indices.
    Under JAX one compiled function (a speedrun batch of 1024 on a 2-core CPU: 2.1-3.1 ms against 4.6-5.1 ms as
    eager ops); elsewhere the same ops run eagerly. Pure indexing and an exact cast: compiled or not, the same bits."""
    ops = keras.ops

    def gather(x_device, idx, rows, cols):
        flat = (idx[:, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]
        return ops.cast(ops.take(x_device, flat, axis=0), "float32")

    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(gather)
    return gather


class EpochOrder(keras.callbacks.Callback):
    """Each epoch's batches come from fit's epoch number (Batches.set_epoch), so a run resumed at epoch or step k
    sees the batches an uninterrupted run saw. fit must not shuffle the batches itself (shuffle=False)."""

    def __init__(self, batches: Batches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)
