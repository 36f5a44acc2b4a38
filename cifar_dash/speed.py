"""Which precision and XLA setting trains a stage fastest on this machine: a short measurement (``python -m cifar_dash
tune STAGE``), kept per machine, or else a documented rule.

The rule (the measurements behind it: docs/benchmarks.md, "Precision and XLA per machine"):
- a CPU with AMX or AVX-512 BF16 (Intel Xeon): ``mixed_bfloat16`` without XLA, the fastest there;
- any other CPU (AVX2, AVX-512 without BF16): the recipe's own setting;
- a GPU: the recipe's own setting (``--mixed-precision`` asks for bfloat16).
A measurement for this machine, stage and backend replaces the rule; it keeps the recipe's own setting unless another
is over 10% faster. Nothing here imports Keras until it measures.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import NamedTuple

from . import runtime

MARGIN = 1.10  # another setting replaces the recipe's only when the recipe's step takes over 10% longer
DROP = 2.0  # settings over twice the best step time leave the measurement after its first round
SETTINGS = (("float32", True), ("float32", False), ("mixed_bfloat16", True), ("mixed_bfloat16", False))


class Choice(NamedTuple):
    precision: str  # "float32" or "mixed_bfloat16"
    xla: bool
    source: str  # why: "recipe", "rule: ...", "measured on DATE: ..." or "asked for"

    def as_dict(self) -> dict:
        return {"precision": self.precision, "xla": self.xla, "source": self.source}


def cache_dir() -> Path:
    return Path(os.environ.get("CIFAR_DASH_CACHE", Path.home() / ".cache" / "cifar-dash"))


def machine_key(machine: dict) -> str:
    """One key per CPU model, core count, accelerator, backend and library versions: a measurement applies only
    where all of them are the same."""
    parts = [machine.get(k) for k in ("cpu", "cpu_isa", "cpu_count", "gpu", "backend")]
    parts.append(sorted((machine.get("versions") or {}).items()))
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def record_path(machine: dict) -> Path:
    return cache_dir() / f"speed-{machine_key(machine)}.json"


def read_records(machine: dict) -> dict:
    try:
        data = json.loads(record_path(machine).read_text())
        return data.get("stages", {}) if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: the rule applies


def write_record(machine: dict, stage: str, record: dict) -> Path:
    from .artifacts import write_json

    path = record_path(machine)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": {k: machine.get(k) for k in ("machine", "cpu", "cpu_isa", "cpu_count", "gpu", "backend")}}
    doc["versions"] = machine.get("versions")
    doc["stages"] = {**read_records(machine), stage: record}
    write_json(path, doc)
    return path


def of_recipe(recipe) -> Choice:
    return Choice("mixed_bfloat16" if recipe.mixed_precision else "float32", bool(recipe.jit_compile), "recipe")


def rule(recipe, machine: dict) -> Choice:
    recipe_choice = of_recipe(recipe)
    if machine.get("gpu"):
        return recipe_choice
    if machine.get("cpu_isa") in runtime.BF16_ISAS:
        return Choice(
            "mixed_bfloat16", False, f"rule: a CPU with {machine['cpu_isa']} trains fastest in bfloat16 without XLA"
        )
    return recipe_choice


def choose(stage: str, recipe, machine: dict | None = None) -> Choice:
    """This machine's measured fastest setting for ``stage``, else the rule's."""
    machine = machine if machine is not None else runtime.info()
    records = read_records(machine)
    measured = records[stage] if stage in records else None
    if measured and measured.get("chosen"):
        best = measured["chosen"]
        return Choice(best["precision"], bool(best["xla"]), f"measured on {measured.get('date', '?')} by tune {stage}")
    return rule(recipe, machine)


def setting(stage_key, recipe, speed, mixed_precision, xla):
    """The recipe with the precision and XLA setting to train with, and why: asked for (``mixed_precision``,
    ``xla``), this machine's measured or ruled fastest (``speed="auto"``, below), or the recipe's own."""
    if mixed_precision or xla is not None:
        precision = "mixed_bfloat16" if mixed_precision or recipe.mixed_precision else "float32"
        choice = Choice(precision, recipe.jit_compile if xla is None else bool(xla), "asked for")
    elif speed == "auto":
        choice = choose(stage_key, recipe)
    elif speed == "recipe":
        choice = of_recipe(recipe)
    else:
        raise ValueError(f"speed must be 'auto' or 'recipe', not {speed!r}")
    recipe = dataclasses.replace(recipe, mixed_precision=choice.precision == "mixed_bfloat16", jit_compile=choice.xla)
    return recipe, choice


def measure(stage_key: str, steps: int = 3, settings=SETTINGS, batch_size: int | None = None, say=print) -> dict:
    """Time the stage's training step (``train_on_batch`` on random images at the recipe's batch size) in every
    setting, interleaved round by round so a machine that slows down or speeds up affects all alike; the median of
    ``steps`` rounds after one warm-up (compilation) step each. Returns the record ``tune`` keeps."""
    import dataclasses

    import keras
    import numpy as np

    from . import compiling, stages

    stage = stages.get(stage_key)
    recipe = stages.recipe_for(stage)
    if batch_size:
        recipe = dataclasses.replace(recipe, batch_size=batch_size)
    b = recipe.batch_size
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(b, 32, 32, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, b)]
    backend = keras.backend.backend()
    if backend == "jax":  # JAX compiles every step; XLA off would mean op by op
        settings = [s for s in settings if s[1]]
    models, times = {}, {}
    before = keras.mixed_precision.global_policy()
    try:
        for precision, xla in settings:
            keras.mixed_precision.set_global_policy(precision)
            r = dataclasses.replace(recipe, jit_compile=xla, mixed_precision=precision == "mixed_bfloat16")
            model = stage.build(r, backbone_weights=None)
            compiling.compile_for_phase(model, r, r.phases[-1], steps_per_epoch=100)
            t = time.perf_counter()
            model.train_on_batch(x, y)
            say(f"  {precision:15s} XLA {'on ' if xla else 'off'}: first step (compiling) {time.perf_counter() - t:.1f} s")
            models[(precision, xla)] = model
            times[(precision, xla)] = []
    finally:
        keras.mixed_precision.set_global_policy(before)
    for round_ in range(steps):
        for key, model in list(models.items()):
            t = time.perf_counter()
            model.train_on_batch(x, y)
            times[key].append(time.perf_counter() - t)
        if round_ == 0:  # a setting over twice the best's time is out after one round (emulated bfloat16)
            best = min(ts[0] for ts in times.values())
            for key in [k for k, ts in times.items() if ts[0] > DROP * best]:
                del models[key]
    rows = [
        {
            "precision": p,
            "xla": xla,
            "step_seconds": round(statistics.median(ts), 4),
            "images_per_second": round(b / statistics.median(ts), 1),
            "steps": len(ts),
        }
        for (p, xla), ts in times.items()
    ]
    fastest = min(rows, key=lambda r: r["step_seconds"])
    own = next(
        (
            r
            for r in rows
            if (r["precision"] == "mixed_bfloat16") == recipe.mixed_precision
            and r["xla"] == (recipe.jit_compile or backend == "jax")  # under JAX every recipe's step compiles
        ),
        None,
    )
    # the recipe's own setting stays unless another is clearly faster: a few percent is within the step-to-step
    # spread of a shared machine, and a change of precision changes the numbers a run computes
    chosen = own if own and own["step_seconds"] <= MARGIN * fastest["step_seconds"] else fastest
    return {
        "stage": stage_key,
        "batch_size": b,
        "steps": steps,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
        "fastest": {"precision": fastest["precision"], "xla": fastest["xla"]},
        "chosen": {"precision": chosen["precision"], "xla": chosen["xla"]},
        "margin": MARGIN,
    }
