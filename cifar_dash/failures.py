"""A run that runs out of memory: recognising it in any backend's exception chain, and one message that says what
ran out, at which settings, and what needs less."""

from __future__ import annotations

import keras

from . import distribute


class OutOfMemory(MemoryError):
    """Training or evaluation ran out of device (or host) memory; str(e) names the settings that need less."""


_OOM_TYPES = {"ResourceExhaustedError", "OutOfMemoryError"}  # TensorFlow; torch (and torch.cuda)
_OOM_TEXT = ("resource_exhausted", "out of memory", "oom when allocating")  # XLA / JAX runtime errors, CUDA


def is_out_of_memory(error: BaseException | None) -> bool:
    """Whether ``error`` (or an exception it was raised from) is an out-of-memory: Python's MemoryError, TensorFlow's
    ResourceExhaustedError, torch's OutOfMemoryError, or a runtime error of XLA/JAX or CUDA that says so."""
    return any(
        isinstance(e, MemoryError)
        or type(e).__name__ in _OOM_TYPES
        or (isinstance(e, RuntimeError) and any(t in str(e).lower() for t in _OOM_TEXT))
        for e in _chain(error)
    )


def out_of_memory_advice(stage_key, recipe, placement, state, error, resumed=False, run_id=None) -> str:
    """One message: what ran out, at which batch size and precision, on what, and the settings that need less."""
    backend = keras.backend.backend()
    n = len(placement.devices or ()) or 1
    where = ", ".join(placement.devices) if placement.devices else (distribute.available(backend) or ["this machine"])[0]
    host = any(isinstance(x, MemoryError) for x in _chain(error))
    what = "the machine's memory" if host else f"memory on {where}"
    per = f", {recipe.batch_size // n} per device" if n > 1 else ""
    half = max(1, recipe.batch_size // 2)
    options = [f"--batch-size {half} (the sidebar's Batch size)"]
    if not recipe.mixed_precision:
        options.append("--mixed-precision (bfloat16 activations take half the memory)")
    more = len(distribute.accelerators(backend))
    if more > n:
        options.append(f"--devices {more} (the batch is split across them)")
    if state == "loading" or host:
        options.append("--limit N (fewer training images)")
    how = "start a new run with " + ", or ".join(options)
    if state == "evaluating":  # the training is done and saved: only the evaluation is missing
        how = (
            f"the trained model is kept in run {run_id}; once memory is free (other jobs or programs closed) "
            f"`python -m cifar_dash train {stage_key} --resume {run_id}` evaluates it"
        )
    elif resumed:
        how = f"this run keeps the batch size it started with; {how}"
    return (
        f"{stage_key} ran out of {what} while {_DOING.get(state, state)} (batch size {recipe.batch_size}{per}, "
        f"{'mixed_bfloat16' if recipe.mixed_precision else 'float32'}, {backend}): {how}. The published model is "
        f"unchanged. ({type(error).__name__}: {_first_line(error)})"
    )


_DOING = {"loading": "loading the data", "running": "training", "evaluating": "evaluating"}


def _chain(error):
    seen = []
    while error is not None and all(error is not s for s in seen):
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def _first_line(error) -> str:
    """The line of the error (or of one it was raised from) that says what ran out, else its first line."""
    for e in _chain(error):
        for line in str(e).splitlines():
            if any(t in line.lower() for t in _OOM_TEXT):
                return line.strip()[:200].rstrip()
    text = str(error).strip().splitlines()
    return text[0][:200].rstrip() if text else ""
