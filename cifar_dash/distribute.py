"""Training on several devices, Keras' own way: ``keras.distribution.DataParallel`` under JAX,
``tf.distribute.MirroredStrategy`` under TensorFlow. No gradient code of our own: every device runs Keras' step on
its share of each batch and Keras (or TensorFlow) averages the gradients."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field


class DeviceError(ValueError):
    """A device setting that cannot work here; str(e) names the setting to change."""


def available(backend: str) -> list[str]:
    """Every device Keras' backend can train on, accelerators first."""
    if backend == "jax":
        import keras

        devices = keras.distribution.list_devices()
    elif backend == "tensorflow":
        import tensorflow as tf

        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")
        ]
    else:
        devices = []
    accelerators = [d for d in devices if "cpu" not in d.lower()]
    return accelerators + [d for d in devices if d not in accelerators]


def accelerators(backend: str) -> list[str]:
    return [d for d in available(backend) if "cpu" not in d.lower()]


@dataclass
class Plan:
    """Where a run trains: ``devices`` (None: Keras' default, one device) and the scope to build, compile and fit in."""

    backend: str
    devices: list[str] | None = None
    _distribution: object = field(default=None, repr=False)

    def scope(self):
        if self._distribution is None:
            return contextlib.nullcontext()
        return self._distribution.scope()

    @property
    def record(self) -> dict | None:
        """Where the run trains, as train_info records it: None on Keras' default single device."""
        if not self.devices:
            return None
        kind = "DataParallel" if self.backend == "jax" else "MirroredStrategy"
        return {"strategy": kind, "devices": list(self.devices), "n": len(self.devices)}


def parse(spec: str | None, backend: str) -> list[str] | None:
    """``--devices``: None (every accelerator when more than one is visible, else one device), "all" (every
    device, CPUs included), "N" (the first N) or a comma-separated list of indices into ``available``."""
    devices = available(backend)
    if spec is None:
        acc = accelerators(backend)
        return acc if len(acc) > 1 else None
    spec = str(spec).strip().lower()
    if spec == "all":
        chosen = devices
    elif spec.isdigit():
        n = int(spec)
        if not 1 <= n <= len(devices):
            raise DeviceError(
                f"--devices {spec}: this machine has {len(devices)} device(s) for {backend} ({', '.join(devices)})"
            )
        chosen = devices[:n]
    else:
        try:
            picks = [int(p) for p in spec.split(",")]
        except ValueError:
            raise DeviceError(f"--devices {spec!r}: give 'all', a count, or device numbers like 0,1") from None
        bad = [p for p in picks if not 0 <= p < len(devices)]
        if bad or len(set(picks)) != len(picks):
            raise DeviceError(
                f"--devices {spec}: no device {bad[0] if bad else 'twice'}; this machine has {len(devices)} "
                f"({', '.join(f'{i}: {d}' for i, d in enumerate(devices))})"
            )
        chosen = [devices[p] for p in picks]
    return chosen if len(chosen) > 1 else None


def plan(spec: str | None, batch_size: int) -> Plan:
    """The Plan for ``--devices spec`` and a recipe's batch size, checked: the batch must divide across them."""
    import keras

    backend = keras.backend.backend()
    devices = parse(spec, backend)
    if not devices:
        return Plan(backend)
    n = len(devices)
    if batch_size % n:
        options = [k for k in range(2, n + 1) if batch_size % k == 0]
        raise DeviceError(
            f"the batch of {batch_size} does not divide across {n} devices; choose --devices "
            + (" or ".join(str(k) for k in options[-2:]) if options else "1")
        )
    if backend == "jax":
        return Plan(backend, devices, keras.distribution.DataParallel(devices=devices))
    if backend == "tensorflow":
        import tensorflow as tf

        return Plan(backend, devices, tf.distribute.MirroredStrategy(devices))
    raise DeviceError(f"several devices are supported under JAX and TensorFlow, not {backend}; use --devices 1")


def uneven(n_devices: int, sizes: dict[str, tuple[int, int]]) -> str | None:
    """Which last batch would not split evenly across ``n_devices`` (``sizes``: what -> (images, batch size)), or
    None. Keras splits every batch across the devices, and an uneven last batch fails part-way through a run (under
    TensorFlow, in the first validation); only a --limit gives such sizes."""
    for what, (images, batch) in sizes.items():
        last = images % batch
        if last % n_devices:
            return f"the last {what} batch holds {last} images ({images} % {batch}), which {n_devices} devices cannot share"
    return None


def even_counts(n_devices: int, sizes: dict[str, tuple[int, int]]) -> list[int]:
    """The (at most two) largest device counts up to ``n_devices`` whose batches all split evenly, ascending; 1
    always does."""
    fits = [k for k in range(n_devices, 0, -1) if not any(b % k for _, b in sizes.values()) and not uneven(k, sizes)]
    return fits[:2][::-1]
