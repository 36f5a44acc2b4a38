"""One training request: everything a run is started with, in one frozen dataclass.

The command line's ``train`` flags are made from its fields (``add_arguments``, ``from_namespace``), the sidebar
fills one, a background job carries one as its command line (``to_argv``; ``from_argv`` reads it back), and
``train.train`` takes one. ``validate`` checks it once, with the same messages everywhere. Adding a training
option is one field here (with its flag in ``metadata``) and one widget in the sidebar. No Keras here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

SPEEDS = ("auto", "recipe")


class RequestError(ValueError):
    """A training request that cannot run; str(e) says which setting and why."""


def _whole(low: int, bound: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r}: must be {bound}")
        return value

    return parse


def epochs_arg(text: str) -> int | tuple[int, ...]:
    try:
        counts = [int(part) for part in str(text).split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a comma-separated list of numbers") from None
    if any(c < 0 for c in counts) or (len(counts) == 1 and counts[0] < 1):
        raise argparse.ArgumentTypeError(f"{text!r}: epochs must be positive")
    return counts[0] if len(counts) == 1 else tuple(counts)


positive_int = _whole(1, "1 or more")
non_negative_int = _whole(0, "0 or more")


def _flag(flag: str, help: str, **argparse_kwargs) -> dict:
    return {"flag": flag, "help": help, **argparse_kwargs}


@dataclass(frozen=True)
class TrainingRequest:
    stage: str
    epochs: int | tuple[int, ...] | None = field(
        default=None,
        metadata=_flag(
            "--epochs",
            "epochs for every phase of the recipe, or one count per phase (e.g. 5,6 for a head phase and a "
            "fine-tuning phase; 0 keeps that phase's own); default: the recipe's",
            type=epochs_arg,
            metavar="N[,N...]",
        ),
    )
    limit: int | None = field(
        default=None,
        metadata=_flag(
            "--limit", "train on the first N training images, test on the first N test images", type=positive_int
        ),
    )
    data_path: str | None = field(
        default=None,
        metadata=_flag(
            "--data",
            "CIFAR-10 .npz, cifar-10-batches-py folder or tar.gz (default: $CIFAR10_PATH, else the Keras download)",
        ),
    )
    backbone: str | None = field(default=None, metadata=_flag("--backbone", "ResNet stages: resnet50v2 or resnet50"))
    backbone_weights: str | None = field(
        default=None,
        metadata=_flag(
            "--backbone-weights",
            "local ImageNet weights file for the backbone (default: $CIFAR_DASH_<BACKBONE>_WEIGHTS, else Keras' download)",
        ),
    )
    out_dir: str | None = field(
        default=None,
        metadata=_flag("--out", "stage folder; the run goes into OUT/runs/RUN_ID (default: checkpoints/STAGE)"),
    )
    resume: bool | str = field(
        default=False,
        metadata=_flag(
            "--resume",
            "continue an interrupted run (default: the stage's latest) with the settings it was started with",
            nargs="?",
            const=True,
            metavar="RUN_ID",
        ),
    )
    continue_from: str | None = field(
        default=None,
        metadata=_flag(
            "--continue-from",
            "add epochs to a finished run of the same recipe: 'published', a run id or a folder, with --epochs above "
            "its own; the new run starts from its weights and history with a fresh optimizer",
            metavar="RUN",
        ),
    )
    save_every: int | None = field(
        default=None,
        metadata=_flag(
            "--save-every",
            "BackupAndRestore every STEPS steps as well as at epoch ends (default: epoch ends; every 100 steps when "
            "an epoch has over 200)",
            type=positive_int,
            metavar="STEPS",
        ),
    )
    devices: str | None = field(
        default=None,
        metadata=_flag(
            "--devices",
            "train on several devices (Keras DataParallel under JAX, MirroredStrategy under TensorFlow): 'all', the "
            "first N, or device numbers; default: every GPU when there are several, else one device",
            metavar="all|N|I,J",
        ),
    )
    batch_size: int | None = field(
        default=None,
        metadata=_flag(
            "--batch-size",
            "images per step in place of the recipe's (less device memory; the learning rate stays the recipe's)",
            type=positive_int,
            metavar="N",
        ),
    )
    run_id: str | None = field(default=None, metadata=_flag("--run-id", argparse.SUPPRESS))  # a job names its run
    evaluate: bool = field(
        default=True, metadata=_flag("--no-evaluate", "train without evaluating (resume evaluates later)", invert=True)
    )
    seed: int | None = field(
        default=None,
        metadata=_flag("--seed", "random seed (default: the recipe's); for run-to-run spread", type=non_negative_int),
    )
    mixed_precision: bool = field(
        default=False, metadata=_flag("--mixed-precision", "bfloat16 compute (GPUs); weights stay float32")
    )
    xla: bool | None = field(
        default=None,
        metadata=_flag("--xla", "XLA-compile the train step (TensorFlow; JAX always compiles)", choices=["on", "off"]),
    )
    speed: str = field(
        default_factory=lambda: os.environ.get("CIFAR_DASH_SPEED", "auto"),
        metadata=_flag(
            "--speed",
            "precision and XLA when neither --mixed-precision nor --xla is given: 'auto' takes what 'tune' measured "
            "fastest on this machine, else a rule (bfloat16 without XLA on CPUs with AMX or AVX-512 BF16, the "
            "recipe's own elsewhere); 'recipe' the recipe's own (default: $CIFAR_DASH_SPEED, else auto)",
            choices=list(SPEEDS),
        ),
    )

    def validate(self) -> TrainingRequest:
        """Raise RequestError (or stages' ValueError for epochs, backbone and batch size) naming what is wrong."""
        self.resolve()
        return self

    def resolve(self, recipe=None):
        """The stage and the recipe this request trains (``recipe``, if given, in place of the stage's own: ablations),
        checked once: RequestError (or stages' ValueError for epochs, backbone and batch size) names what is wrong.
        A resumed run keeps the recipe it was started with, so the recipe is None then."""
        from . import stages

        if self.stage not in stages.KEYS:
            raise RequestError(f"unknown stage {self.stage!r} (choose from {', '.join(stages.KEYS)})")
        for name in ("limit", "save_every"):  # the batch size is checked with the recipe, below
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise RequestError(f"{name.replace('_', ' ')} must be a whole number of 1 or more, not {v!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise RequestError(f"seed must be a whole number of 0 or more, not {self.seed!r}")
        if self.speed not in SPEEDS:
            raise RequestError(f"speed must be one of {', '.join(SPEEDS)}, not {self.speed!r}")
        if self.resume and self.continue_from:
            raise RequestError("resume a run or continue from one, not both")
        stage = stages.get(self.stage)
        if self.resume:
            return stage, None
        base = dataclasses.replace(stage, recipe=recipe) if recipe else stage
        return stage, stages.recipe_for(base, self.epochs, self.backbone, self.seed, self.batch_size)

    def to_argv(self) -> list[str]:
        """``python -m cifar_dash train`` arguments that parse back into this request (``from_argv``)."""
        argv = [self.stage]
        for f in dataclasses.fields(self)[1:]:
            value, meta = getattr(self, f.name), f.metadata
            if value == f.default and f.name != "speed":  # the speed always: a child's environment may differ
                continue
            if meta.get("choices") == ["on", "off"]:
                argv += [meta["flag"], "on" if value else "off"]
            elif meta.get("invert") or (value is True and "nargs" not in meta):
                argv.append(meta["flag"])
            elif isinstance(value, tuple):
                argv += [meta["flag"], ",".join(str(int(v)) for v in value)]
            elif value is True:  # --resume without a run id
                argv.append(meta["flag"])
            else:
                argv += [meta["flag"], str(value)]
        return argv

    @classmethod
    def from_argv(cls, argv: list[str]) -> TrainingRequest:
        parser = argparse.ArgumentParser(prog="train")
        add_arguments(parser)
        return cls.from_namespace(parser.parse_args(argv))

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> TrainingRequest:
        values = {}
        for f in dataclasses.fields(cls):
            v = getattr(ns, f.name)
            if f.metadata.get("invert"):
                v = not v
            elif f.metadata.get("choices") == ["on", "off"]:
                v = {"on": True, "off": False, None: None}[v]
            elif isinstance(v, Path):
                v = str(v)
            values[f.name] = v
        return cls(**values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train`` command's arguments, one per field of TrainingRequest."""
    from .stages import KEYS

    parser.add_argument("stage", choices=KEYS)
    for f in dataclasses.fields(TrainingRequest)[1:]:
        meta = dict(f.metadata)
        flag, invert = meta.pop("flag"), meta.pop("invert", False)
        if invert or (f.type == "bool" and "nargs" not in meta):
            parser.add_argument(flag, dest=f.name, action="store_true", help=meta["help"])
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if f.metadata.get("choices") == ["on", "off"]:
            default = None
        parser.add_argument(flag, dest=f.name, default=default, **meta)
