"""What ran the code: machine, accelerator, library versions. Recorded next to every figure."""

from __future__ import annotations

import os
import platform
import sys
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)  # the processor does not change under a running program; pages ask on every render
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_isa() -> str | None:
    """The widest vector instructions the CPU offers, which decide CPU training speed (and whether bfloat16 pays):
    "AMX", "AVX-512 BF16", "AVX-512", "AVX2" or None when unknown."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((set(line.split(":", 1)[1].split()) for line in fh if line.startswith("flags")), set())
    except OSError:
        return None
    for name, flag in (("AMX", "amx_bf16"), ("AVX-512 BF16", "avx512_bf16"), ("AVX-512", "avx512f"), ("AVX2", "avx2")):
        if flag in flags:
            return name
    return None


BF16_ISAS = ("AMX", "AVX-512 BF16")


def bfloat16_warning(machine: dict | None = None) -> str | None:
    """Why bfloat16 compute (``--mixed-precision``) would likely slow training on ``machine`` (an ``info()`` dict;
    default: this one), or None where it should pay (a GPU, a CPU with AVX512-BF16 or AMX) or the CPU is unknown."""
    machine = machine if machine is not None else info()
    isa = machine.get("cpu_isa")
    if machine.get("gpu") or isa is None or isa in BF16_ISAS:
        return None
    return (
        f"this CPU has {isa} but neither AVX512-BF16 nor AMX, so bfloat16 maths is emulated and training is "
        "likely slower than in float32 (see benchmarks/bench_training.py)"
    )


def accelerator() -> str | None:
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            devs = [d for d in jax.devices() if d.platform != "cpu"]
            return devs[0].device_kind if devs else None
        if backend == "torch":
            import torch

            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    except Exception:
        return None
    return None


def host_info() -> dict:
    """The part of ``info()`` that needs no Keras or backend import (for pages that only read files): the CPU, the
    backend Keras will pick and the installed versions, with ``gpu`` "GPU" where an NVIDIA driver lists one."""
    from importlib import metadata

    backend = os.environ.get("KERAS_BACKEND") or _keras_config_backend() or "tensorflow"
    versions = {"python": sys.version.split()[0]}
    for name in ("keras", backend):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    gpus = Path("/proc/driver/nvidia/gpus")
    return {
        "cpu": cpu_name(),
        "cpu_isa": cpu_isa(),
        "cpu_count": os.cpu_count(),
        "gpu": "GPU" if gpus.is_dir() and any(gpus.iterdir()) else None,
        "backend": backend,
        "versions": versions,
    }


def _keras_config_backend() -> str | None:
    import json

    try:
        return json.loads((Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json").read_text()).get(
            "backend"
        )
    except (OSError, ValueError, AttributeError):
        return None


@lru_cache(maxsize=1)
def info() -> dict:
    import keras

    backend = keras.backend.backend()
    versions = {"python": sys.version.split()[0], "keras": keras.__version__}
    try:
        mod = __import__({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend, backend))
        versions[backend] = mod.__version__
    except Exception:
        pass
    gpu = accelerator()
    cpu = cpu_name()
    isa = cpu_isa()
    return {
        "machine": f"{gpu} GPU" if gpu else f"CPU: {cpu} ({os.cpu_count()} cores{', ' + isa if isa else ''})",
        "cpu": cpu,
        "cpu_isa": isa,
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "backend": backend,
        "versions": versions,
        "platform": platform.platform(),
    }


RECORD_FIELDS = ("machine", "cpu", "cpu_isa", "cpu_count", "gpu", "backend", "platform")


def record_machine(machine: dict) -> dict:
    """The fields of an ``info()`` dict kept beside a stored measurement (benchmarks/results/*.json)."""
    return {k: machine.get(k) for k in RECORD_FIELDS}


def results_name(kind: str, machine: dict) -> str:
    """The file name of a stored measurement: ``KIND-<gpu or cpu>-<backend>.json``, e.g.
    ``accelerator-amd-epyc-tensorflow.json``."""
    device = (machine.get("gpu") or machine.get("cpu") or "cpu").lower().replace(" ", "-")
    return f"{kind}-{device}-{machine['backend']}.json"


def quiet_native_logging() -> None:
    """Keep TensorFlow's and XLA's C++ start-up lines (absl, CUDA probing) off the terminal: they write to file
    descriptor 2 directly, so it goes to /dev/null while Python's own stderr (messages, warnings, tracebacks) keeps
    the real one. ``--verbose`` leaves both alone."""
    import logging
    import sys

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # e.g. "triggered tf.function retracing" per new model
    if sys.stderr is not sys.__stderr__:  # already redirected by a caller (a test's capture): leave it be
        return
    try:
        if sys.stderr.fileno() != 2:
            return
        real = os.dup(2)
        sink = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):
        return
    sys.stderr.flush()
    os.dup2(sink, 2)
    os.close(sink)
    sys.stderr = os.fdopen(real, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
