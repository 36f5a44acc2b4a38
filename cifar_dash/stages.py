"""The one table of stages: what each stage changes, why, the seed's reported figure, and its full recipe.

Adding a stage is one entry in STAGES (plus a builder in models.py when it needs a new architecture).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class _Builder:
    """The model builder ``models.NAME``, imported when a model is built: reading the table needs no Keras."""

    name: str

    def __call__(self, *args, **kwargs):
        from . import models

        return getattr(models, self.name)(*args, **kwargs)


@dataclass(frozen=True)
class Phase:
    name: str
    epochs: int
    learning_rate: float
    # "all": every layer trains; "head": the ImageNet backbone is frozen; "from:LAYER": backbone trains from LAYER on
    trainable: str = "all"


@dataclass(frozen=True)
class Recipe:
    phases: tuple[Phase, ...]
    batch_size: int = 128
    optimizer: str = "adam"  # adam | adamw | sgd_nesterov
    momentum: float = 0.9  # sgd_nesterov only
    weight_decay: float = 0.0  # decoupled (AdamW) or Keras weight_decay for SGD
    lr_schedule: str = "constant"  # constant | reduce_on_plateau | onecycle (piecewise linear, below)
    onecycle: tuple[float, float, float] = (0.2, 0.0, 0.0)  # onecycle: (peak position, start, end) as fractions
    plateau_factor: float = 0.5
    plateau_patience: int = 1
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # 0 = no MixUp; else lambda ~ Beta(alpha, alpha)
    augmentation: tuple[str, ...] = ()  # Keras preprocessing layers inside the model, active only in training
    # Done by the batch loader in NumPy instead (cheap, exact pixels): "flip_alternate" (each image flipped at random
    # in the first epoch, then every image flipped the other way every second epoch) and "crop:N" (reflect-pad N
    # pixels, random integer shift of up to N in each direction)
    loader_augmentation: tuple[str, ...] = ()
    backbone: str | None = None  # mobilenetv2 | resnet50v2 | resnet50
    backbone_input: int = 32  # side the image is upsampled to before the backbone
    interpolation: str = "bilinear"
    backbone_bn_training: bool = False  # BatchNorm of the backbone updates its statistics while fine-tuning
    validation_size: int = 5000  # held out from the end of the training set; the test set is never used to tune
    tta: bool | str = False  # test-time augmentation: False, "flip" (True) or "flip_shift" (flips x 1-pixel shifts)
    mixed_precision: bool = False  # bfloat16 compute with float32 weights (GPUs, and CPUs with AVX512-BF16)
    jit_compile: bool = False  # XLA-compile the train step (Keras turns XLA off on CPU-only TensorFlow by default)
    # Lookahead/EMA of the weights (layers.LookaheadSGD): (start epoch, base, power, every N steps); None = off
    lookahead: tuple[float, float, float, int] | None = None
    norm_bias_lr_scale: float = 1.0  # BatchNorm biases train this many times faster (models.speedrun; layers.ScaledBias)
    seed: int = 0

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    @property
    def extendable(self) -> bool:
        """Whether a finished run can be continued for more epochs and still be this recipe (``train
        --continue-from``): not when the rate schedule or the weight averaging spans the whole run."""
        return self.lr_schedule != "onecycle" and not self.lookahead

    def with_epochs(self, epochs: int | Sequence[int]) -> Recipe:
        """``epochs`` (an int) for every phase, or one count per phase in order (0 keeps that phase's own)."""
        if isinstance(epochs, int):
            counts = [epochs] * len(self.phases)
        else:
            counts = [int(e) for e in epochs]
            if len(counts) != len(self.phases):
                names = ", ".join(p.name for p in self.phases)
                raise ValueError(
                    f"{len(counts)} epoch counts for {len(self.phases)} phases ({names}); give one per "
                    "phase, or one number for all"
                )
            counts = [c or p.epochs for c, p in zip(counts, self.phases)]
        if any(c < 1 for c in counts):
            raise ValueError(f"epochs must be at least 1 per phase, not {epochs}")
        return dataclasses.replace(self, phases=tuple(dataclasses.replace(p, epochs=c) for p, c in zip(self.phases, counts)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Stage:
    key: str
    title: str
    reported_accuracy: float  # the seed deck's figure, percent
    changed: str  # one line: what changes from the previous stage and why
    seed_says: str
    # the Keras model of a recipe: ``stage.build(recipe, backbone_weights=...)``, raw uint8 32x32x3 in, 10 softmax
    # probabilities out (``backbone_weights``: a weights file, "imagenet" for Keras' download, or None for random)
    build: Callable = field(repr=False)
    recipe: Recipe = field(default_factory=lambda: Recipe(phases=(Phase("train", 1, 1e-3),)))
    backbone_options: tuple[str, ...] = ()
    short: str = ""  # a label of a few words for narrow places (cards, chart ticks); the key when empty

    @property
    def label(self) -> str:
        return self.short or self.key


# the ResNet stages' recipe: 5 epochs at 160x160, the whole network fine-tuned, the rate halved on a plateau
_RESNET = Recipe(
    phases=(Phase("finetune", 5, 1e-4, trainable="all"),),
    batch_size=64,
    lr_schedule="reduce_on_plateau",
    plateau_factor=0.5,
    plateau_patience=1,
    augmentation=("flip", "translation:0.1"),
    backbone="resnet50v2",
    backbone_input=160,
    backbone_bn_training=True,
)

STAGES: tuple[Stage, ...] = (
    Stage(
        "mlp",
        "Basic MLP + Xavier init",
        46.19,
        "Flatten the 32x32x3 image into 3,072 numbers and learn Dense layers with Glorot (Xavier) init.",
        "Flattening destroys spatial structure, so the model leans on background colour more than on shape.",
        _Builder("mlp"),
        Recipe(phases=(Phase("train", 20, 1e-3),), batch_size=128),
        short="MLP",
    ),
    Stage(
        "deep_mlp",
        "Deep & wide MLP",
        42.89,
        "Four 512-wide hidden layers (2.37 M parameters), no regularisation, trained long: it memorises.",
        "About 2.3 million parameters memorise the training set, noise included, so test accuracy goes down.",
        _Builder("deep_mlp"),
        Recipe(phases=(Phase("train", 40, 1e-3),), batch_size=128),
        short="Deep MLP",
    ),
    Stage(
        "cnn",
        "CNN (Conv + Pool + BatchNorm + Dropout)",
        70.71,
        "Keep the 2-D structure: Conv2D + MaxPooling extract features, BatchNorm stabilises, "
        "Dropout 0.5 fights overfitting.",
        "Conv2D + MaxPooling extract features while shrinking space; BatchNormalization stabilises training; "
        "Dropout 50% stops the MLP's overfitting.",
        _Builder("cnn"),
        Recipe(phases=(Phase("train", 15, 5e-4),), batch_size=128),
        short="CNN",
    ),
    Stage(
        "vgg_aug",
        "VGG style + augmentation",
        76.33,
        "Deeper Conv-Conv-Pool (VGG) blocks, and random flip, rotation and zoom so every epoch sees new images.",
        "Random flip, rotation and zoom with a deeper Conv-Conv-Pool network block overfitting; validation accuracy "
        "rises steadily.",
        _Builder("vgg"),
        Recipe(
            phases=(Phase("train", 12, 2e-3),),
            batch_size=128,
            lr_schedule="onecycle",
            onecycle=(0.25, 0.1, 0.01),
            augmentation=("flip", "rotation:0.05", "zoom:0.1"),
        ),
        short="VGG + augmentation",
    ),
    Stage(
        "mobilenetv2_frozen",
        "MobileNetV2 transfer, base frozen",
        80.22,
        "Borrow ImageNet features: MobileNetV2 on images upsampled 3x to 96x96, base frozen, only a 164 k head trains.",
        "MobileNetV2 pre-trained on ImageNet; images upsampled 3x to 96x96; base frozen, so only about 160 thousand "
        "parameters train, and training is fast.",
        _Builder("transfer"),
        Recipe(
            phases=(Phase("head", 10, 1e-3, trainable="head"),),
            batch_size=128,
            backbone="mobilenetv2",
            backbone_input=96,
        ),
        backbone_options=("mobilenetv2",),
        short="MobileNetV2 frozen",
    ),
    Stage(
        "mobilenetv2_finetune",
        "MobileNetV2 fine-tuned",
        82.16,
        "Warm up the new head, then unfreeze the deeper MobileNetV2 blocks and train them at a very low rate (1e-5).",
        "Step 1: warm up the new classifier head. Step 2: unfreeze the deeper layers and train with a very low "
        "learning rate (1e-5).",
        _Builder("transfer"),
        Recipe(
            phases=(
                Phase("head", 5, 1e-3, trainable="head"),
                Phase("finetune", 3, 1e-5, trainable="from:block_12_expand"),
            ),
            batch_size=64,
            backbone="mobilenetv2",
            backbone_input=96,
        ),
        backbone_options=("mobilenetv2",),
        short="MobileNetV2 fine-tuned",
    ),
    Stage(
        "resnet50v2",
        "ResNet50V2 + LR scheduling",
        93.90,
        "A 23 M-parameter ImageNet ResNet at 160x160, fully fine-tuned; ReduceLROnPlateau halves the rate when "
        "validation accuracy stalls; random shifts.",
        "About 23 million parameters; images upsampled 5x to 160x160; ReduceLROnPlateau halves the learning rate "
        "whenever accuracy stalls; translation (shift) augmentation added.",
        _Builder("transfer"),
        _RESNET,
        backbone_options=("resnet50v2", "resnet50"),
        short="ResNet50V2",
    ),
    Stage(
        "resnet50v2_sota",
        "Final: MixUp + AdamW + label smoothing",
        94.38,
        "Same network and budget, modern tricks: MixUp blends image pairs, AdamW decouples weight decay, "
        "label smoothing curbs over-confidence.",
        "Same budget, no extra training time: MixUp (blend two images and their labels), AdamW (decoupled weight "
        "decay), label smoothing (less over-confidence).",
        _Builder("transfer"),
        # the same recipe with the seed's modern tricks: only these fields change
        dataclasses.replace(_RESNET, optimizer="adamw", weight_decay=0.05, label_smoothing=0.1, mixup_alpha=0.2),
        backbone_options=("resnet50v2", "resnet50"),
        short="ResNet50V2 + MixUp",
    ),
    Stage(
        "speedrun",
        "Beyond the seed: a small net trained fast from scratch",
        94.01,
        "No ImageNet, no upsampling: a 2 M-parameter three-block net (airbench-style) behind a frozen patch-whitening "
        "conv, Nesterov SGD with a one-cycle rate, BatchNorm biases at 64x the rate, Lookahead weight averaging, "
        "label smoothing 0.2, alternating flips + 2-pixel shifts, all 50,000 training images, flip + shift "
        "test-time augmentation.",
        "Not in the seed deck. Reference: airbench94 (Keller Jordan, 2024) reports 94.01% mean in 3.83 s on one A100; "
        "its reported figure stands in the 'reported' column.",
        _Builder("speedrun"),
        Recipe(
            phases=(Phase("train", 10, 1.5, trainable="all"),),
            batch_size=1024,
            optimizer="sgd_nesterov",
            momentum=0.85,
            weight_decay=0.00887,
            lr_schedule="onecycle",
            onecycle=(0.23, 0.2, 0.07),
            label_smoothing=0.2,
            loader_augmentation=("flip_alternate", "crop:2"),
            tta="flip_shift",
            validation_size=0,
            jit_compile=True,
            lookahead=(3, 0.95, 3.0, 5),
            norm_bias_lr_scale=64.0,
        ),
        short="Speedrun",
    ),
)

_BY_KEY = {s.key: s for s in STAGES}
KEYS = tuple(_BY_KEY)


def get(key: str) -> Stage:
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"unknown stage {key!r}; stages are: {', '.join(KEYS)}") from None


def stored_recipe(recipe: dict) -> dict:
    """A recipe stored as JSON (train_info, metrics) with every field added to ``Recipe`` after it was written set to
    its default."""
    defaults = {
        f.name: json.loads(json.dumps(f.default)) for f in dataclasses.fields(Recipe) if f.default is not dataclasses.MISSING
    }
    return {**defaults, **recipe}


def recipe_from_dict(recipe: dict) -> Recipe:
    """The Recipe a stored recipe dict (train_info) describes: what ``train --resume`` rebuilds the run's recipe from."""
    d = stored_recipe(json.loads(json.dumps(recipe)))
    names = {f.name for f in dataclasses.fields(Recipe)}
    d = {k: v for k, v in d.items() if k in names}
    d["phases"] = tuple(Phase(**p) for p in d["phases"])
    for k, v in d.items():
        if isinstance(v, list):
            d[k] = tuple(v)
    return Recipe(**d)


def recipe_for(
    stage: Stage,
    epochs: int | Sequence[int] | None = None,
    backbone: str | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
) -> Recipe:
    """The stage's recipe with the given epochs, backbone, seed and batch size in place of its own (the learning rate
    stays the recipe's)."""
    recipe = stage.recipe
    if seed is not None:
        recipe = dataclasses.replace(recipe, seed=int(seed))
    if batch_size is not None:
        if int(batch_size) < 1:
            raise ValueError(f"batch size must be at least 1, not {batch_size}")
        recipe = dataclasses.replace(recipe, batch_size=int(batch_size))
    if epochs:
        recipe = recipe.with_epochs(epochs)
    if backbone and backbone != recipe.backbone:
        if backbone not in stage.backbone_options:
            options = " or ".join(stage.backbone_options) or "none"
            raise ValueError(f"stage {stage.key} takes backbone {options}, not {backbone}")
        recipe = dataclasses.replace(recipe, backbone=backbone)
    return recipe
