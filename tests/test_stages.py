import numpy as np
import pytest

from cifar_dash import models, stages

SEED_ORDER = [
    "mlp",
    "deep_mlp",
    "cnn",
    "vgg_aug",
    "mobilenetv2_frozen",
    "mobilenetv2_finetune",
    "resnet50v2",
    "resnet50v2_sota",
]
SEED_REPORTED = [46.19, 42.89, 70.71, 76.33, 80.22, 82.16, 93.90, 94.38]


def _seed_table():
    """The reported accuracies in the seed's own table (../shared/SEED.md), in its order; None where absent."""
    import re
    from pathlib import Path

    seed = Path(__file__).resolve().parents[2] / "shared" / "SEED.md"
    if not seed.exists():
        return None
    rows = re.findall(r"^\| \w+ \| [^|]+ \| (\d+\.\d+)% \|", seed.read_text(), flags=re.M)
    return [float(v) for v in rows]


def test_table_order_and_reported_figures():
    assert list(stages.KEYS[:8]) == SEED_ORDER and stages.KEYS[8] == "speedrun"
    reported = [s.reported_accuracy for s in stages.STAGES[:8]]
    seed = _seed_table()
    if seed is not None:  # against the seed document itself where this checkout sits beside it
        assert reported == seed
    assert reported == SEED_REPORTED
    assert len({s.title for s in stages.STAGES}) == len(stages.STAGES)  # every stage has its own title
    for before, after in zip(stages.STAGES, stages.STAGES[1:]):
        assert after.changed != before.changed  # each stage says what it changes, not a copy of the last
    for s in stages.STAGES:
        assert sum(p.epochs for p in s.recipe.phases) == s.recipe.epochs


def _build(key, **kw):
    s = stages.get(key)
    r = stages.recipe_for(s, **kw)
    m = s.build(r, backbone_weights=None)
    models.set_trainable(m, r.phases[0].trainable)
    return m, r


def test_parameter_counts_against_the_seed():
    m, _ = _build("deep_mlp")
    total, _ = models.count_params(m)
    assert abs(total - 2.3e6) <= 0.1 * 2.3e6
    m, _ = _build("mobilenetv2_frozen")
    _, trainable = models.count_params(m)
    assert abs(trainable - 160e3) <= 0.1 * 160e3
    for backbone in ("resnet50v2", "resnet50"):
        m, _ = _build("resnet50v2", backbone=backbone)
        total, _ = models.count_params(m)
        assert 23e6 <= total <= 26e6


def test_mlp_uses_glorot_and_cnn_has_bn_and_half_dropout():
    m, _ = _build("mlp")
    dense = [layer for layer in m.layers if layer.__class__.__name__ == "Dense"]
    assert all(d.kernel_initializer.__class__.__name__ == "GlorotUniform" for d in dense)
    m, _ = _build("cnn")
    kinds = [layer.__class__.__name__ for layer in m.layers]
    assert {"Conv2D", "MaxPooling2D", "BatchNormalization"} <= set(kinds)
    assert any(layer.__class__.__name__ == "Dropout" and layer.rate == 0.5 for layer in m.layers)


def test_recipes_are_faithful_to_the_seed():
    vgg = stages.get("vgg_aug").recipe
    assert {a.split(":")[0] for a in vgg.augmentation} == {"flip", "rotation", "zoom"}
    ft = stages.get("mobilenetv2_finetune").recipe
    assert ft.phases[0].trainable == "head" and ft.phases[1].learning_rate == 1e-5
    assert stages.get("mobilenetv2_frozen").recipe.backbone_input == 96
    r = stages.get("resnet50v2").recipe
    assert r.backbone == "resnet50v2" and r.backbone_input == 160 and r.lr_schedule == "reduce_on_plateau"
    assert r.plateau_factor == 0.5 and any(a.startswith("translation") for a in r.augmentation)
    sota = stages.get("resnet50v2_sota").recipe
    assert sota.mixup_alpha > 0 and sota.optimizer == "adamw" and sota.label_smoothing > 0
    assert sota.epochs == r.epochs  # same budget
    with pytest.raises(ValueError):
        stages.recipe_for(stages.get("mlp"), backbone="resnet50")
    with pytest.raises(KeyError, match="unknown stage"):
        stages.get("nope")


def test_finetune_unfreezes_only_deeper_layers():
    m, r = _build("mobilenetv2_finetune")
    _, head_only = models.count_params(m)
    models.set_trainable(m, r.phases[1].trainable)
    _, deeper = models.count_params(m)
    base = m.get_layer("backbone")
    assert head_only < deeper < models.count_params(m)[0]
    assert not base.get_layer("Conv1").trainable and base.get_layer("block_16_project").trainable
    models.set_trainable(m, r.phases[1].trainable, bn_trainable=r.backbone_bn_training)
    assert not base.get_layer("block_16_project_BN").trainable  # BN stays frozen while fine-tuning
    assert base.get_layer("block_16_project").trainable


@pytest.mark.parametrize("key", ["mlp", "cnn", "vgg_aug"])
def test_one_input_contract_raw_uint8(key):
    m, _ = _build(key)
    x = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3)).astype(np.uint8)
    p = np.asarray(m.predict(x.astype("float32"), verbose=0))
    assert p.shape == (4, 10)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    # augmentation is off at inference: same input, same output
    np.testing.assert_allclose(p, m.predict(x.astype("float32"), verbose=0), rtol=1e-5)


def test_caffe_preprocess_matches_keras():
    import keras

    from cifar_dash.layers import CaffePreprocess

    x = np.random.default_rng(1).uniform(0, 255, size=(2, 8, 8, 3)).astype("float32")
    ours = keras.ops.convert_to_numpy(CaffePreprocess()(x))
    ref = keras.applications.resnet50.preprocess_input(x.copy())
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_speedrun_network_matches_its_reference():
    m, r = _build("speedrun")
    total, _ = models.count_params(m)
    assert 1.8e6 <= total <= 2.2e6  # airbench94's net is about 2 M parameters
    # about 0.36 PFLOP for 10 epochs of 50,000 images at 3x the forward cost -> about 240 MFLOP per image forward
    assert 200e6 <= models.flops_per_image(m) <= 280e6
    assert r.tta and r.label_smoothing == 0.2 and r.optimizer == "sgd_nesterov" and r.backbone is None


def test_flops_of_a_dense_layer_by_hand():
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Flatten()(inp)
    out = keras.layers.Dense(10)(x)
    assert models.flops_per_image(keras.Model(inp, out)) == 2 * 3072 * 10
    conv = keras.Model(inp, keras.layers.Conv2D(4, 3, padding="same")(inp))
    assert models.flops_per_image(conv) == 2 * 3 * 3 * 3 * 4 * 32 * 32


def test_onecycle_schedule_shape():
    from cifar_dash.layers import TriangularSchedule

    s = TriangularSchedule(0.2, 100, warmup=0.2)
    values = [float(s(i)) for i in (0, 10, 20, 60, 100)]
    assert values == pytest.approx([0.0, 0.1, 0.2, 0.1, 0.0])


def test_onecycle_schedule_with_start_and_end_fractions():
    from cifar_dash.layers import TriangularSchedule

    s = TriangularSchedule(1.5, 100, warmup=0.25, start=0.2, end=0.1)
    values = [float(s(i)) for i in (0, 25, 100)]
    assert values == pytest.approx([0.3, 1.5, 0.15])
    assert TriangularSchedule.from_config(s.get_config()).get_config() == s.get_config()


def test_whitening_kernel_whitens_image_patches():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 33, 33, 1))
    # strongly correlated neighbouring pixels and channels, like natural images
    img = (base[:, :32, :32] + base[:, 1:, 1:] + 0.1 * rng.normal(size=(200, 32, 32, 3))).astype("float32")
    kernel = models.whitening_kernel(img, eps=1e-6)
    assert kernel.shape == (2, 2, 3, 24)
    np.testing.assert_allclose(kernel[..., 12:], -kernel[..., :12])
    patches = np.stack([img[:, i : 31 + i, j : 31 + j] for i in (0, 1) for j in (0, 1)], axis=3).reshape(-1, 12)
    out = patches @ kernel.reshape(12, 24)[:, :12]
    np.testing.assert_allclose(np.cov(out, rowvar=False, bias=True), np.eye(12), atol=0.02)


def test_speedrun_whitening_stays_frozen_and_convs_start_as_identity():
    m, r = _build("speedrun")
    x = np.random.default_rng(0).integers(0, 256, size=(64, 32, 32, 3)).astype("uint8")
    models.init_from_data(m, x)
    models.set_trainable(m, "all")
    whiten = m.get_layer(models.WHITEN)
    assert not whiten.trainable and all(w is not whiten.kernel for w in m.trainable_weights)
    assert np.abs(keras_np(whiten.kernel)).sum() > 0
    k = keras_np(m.get_layer("block2_conv2").kernel)
    np.testing.assert_array_equal(k[1, 1], np.eye(256))
    assert np.abs(k[0]).sum() == 0
    k1 = keras_np(m.get_layer("block1_conv1").kernel)  # 24 -> 64: the first 24 filters are identities
    np.testing.assert_array_equal(k1[1, 1, :, :24], np.eye(24))
    assert np.abs(k1[..., 24:]).sum() > 0
    assert not r.mixed_precision and r.jit_compile and r.tta == "flip_shift"
    assert r.validation_size == 0 and r.lookahead and r.norm_bias_lr_scale == 64.0
    # every BatchNorm bias is a ScaledBias with scale 8 (64x the rate); BatchNorm itself has no beta or gamma
    import keras

    from cifar_dash.layers import ScaledBias

    biases = [layer for layer in m.layers if isinstance(layer, ScaledBias)]
    assert len(biases) == 6 and all(b.scale == 8.0 for b in biases)
    assert all(not layer.center for layer in m.layers if isinstance(layer, keras.layers.BatchNormalization))


def test_scaled_bias_trains_scale_squared_faster_under_sgd():
    import keras

    from cifar_dash.layers import ScaledBias

    x = np.zeros((4, 3), dtype="float32")
    effective = []
    for scale in (1.0, 8.0):
        inp = keras.Input((3,))
        m = keras.Model(inp, ScaledBias(scale)(inp))
        m.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
        m.train_on_batch(x, np.ones((4, 3), dtype="float32"))
        effective.append(keras_np(m.layers[1].b) * scale)  # the bias the layer adds
    np.testing.assert_allclose(effective[1], 64 * effective[0], rtol=1e-5)
    layer = ScaledBias(8.0)
    assert ScaledBias.from_config(layer.get_config()).scale == 8.0


def test_lookahead_rho_schedule():
    from cifar_dash.layers import LookaheadSGD

    opt = LookaheadSGD(0.1, start_step=10, total_steps=20, every=5, base=0.95, power=3.0)
    rho = [float(opt.lookahead_rho(s)) for s in range(1, 21)]
    assert rho[:9] == [0.0] * 9  # before the start the average follows the weights
    assert rho[10] == 1.0 and rho[13] == 1.0  # between lookahead steps it holds
    assert rho[14] == pytest.approx(0.95**5 * (15 / 20) ** 3)
    assert rho[19] == pytest.approx(0.95**5)
    again = LookaheadSGD.from_config(opt.get_config())
    assert (again.start_step, again.total_steps, again.every, again.power) == (10, 20, 5, 3.0)


def test_lookahead_pulls_weights_back_to_the_average():
    import keras

    from cifar_dash.layers import LookaheadSGD

    def run(opt):
        inp = keras.Input((1,))
        layer = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")
        m = keras.Model(inp, layer(inp))
        m.compile(optimizer=opt, loss="mse")
        ws = []
        for _ in range(10):  # the gradient pushes the weight up by a constant-ish amount each step
            m.train_on_batch(np.ones((1, 1), "float32"), 100 * np.ones((1, 1), "float32"))
            ws.append(float(keras_np(layer.kernel)[0, 0]))
        return ws

    plain = run(keras.optimizers.SGD(0.01))
    look = run(LookaheadSGD(0.01, start_step=0, total_steps=10, every=5, base=0.95, power=0.0))
    assert look[:4] == pytest.approx(plain[:4])  # identical until the first lookahead step
    # step 5: w = rho * w(step 1, where the average starts) + (1 - rho) * w(step 5), rho = 0.95 ** 5
    rho = 0.95**5
    assert look[4] == pytest.approx(rho * plain[0] + (1 - rho) * plain[4], rel=1e-4)
    assert look[9] < plain[9]


def keras_np(v):
    import keras

    return keras.ops.convert_to_numpy(v)


def test_speedrun_ablation_variants_change_one_trick_and_summary_by_hand():
    import sys
    from pathlib import Path

    import pytest

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import ablate_speedrun as ab

    from cifar_dash import stages

    base = stages.get("speedrun").recipe.to_dict()
    for name, (_, changes) in ab.VARIANTS.items():
        r = ab.variant_recipe(name).to_dict()
        differ = {k for k in base if base[k] != r[k]}
        assert differ == set(changes), name  # exactly the fields the variant names, and they really change
    rows = [
        {"variant": v, "seed": s, "test_accuracy": a, "tta_accuracy": {"none": a - 0.01}, "train_seconds": 10.0}
        for v, s, a in (("full", 0, 0.94), ("full", 1, 0.92), ("no_lookahead", 0, 0.90))
    ]
    by = {s["variant"]: s for s in ab.summary(rows)}
    assert by["full"]["mean_accuracy"] == pytest.approx(0.93) and by["full"]["std"] == pytest.approx(0.01414, abs=1e-5)
    assert by["no_lookahead"]["vs_full_points"] == pytest.approx(-3.0) and by["no_lookahead"]["std"] is None
    assert by["full"]["mean_one_view"] == pytest.approx(0.92)


def test_ablation_table_reads_the_scripts_summary():
    import sys
    from pathlib import Path

    import pytest

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import ablate_speedrun as ab

    from cifar_dash import report

    assert report.ablation_table({"rows": []}) == ("", [])
    rows = [
        {
            "variant": v,
            "removes": ab.VARIANTS[v][0],
            "seed": s,
            "test_accuracy": a,
            "tta_accuracy": {"none": a - d},
            "train_seconds": 600.0,
            "n_train": 10000,
            "n_test": 10000,
            "epochs": 10,
            "train_machine": "CPU: test",
        }
        for v, s, a, d in (("no_label_smoothing", 0, 0.85, 0.02), ("full", 0, 0.88, 0.01), ("full", 1, 0.86, 0.01))
    ]
    protocol, table = report.ablation_table({"rows": rows, "summary": ab.summary(rows)})
    assert [t["variant"] for t in table] == ["full", "no_label_smoothing"]  # the full recipe first
    full, ls = table
    assert full["test accuracy %"] == pytest.approx(87.0) and full["vs full (points)"] == 0
    assert ls["vs full (points)"] == pytest.approx(-2.0) and ls["one view %"] == pytest.approx(83.0)
    assert ls["one view vs full (points)"] == pytest.approx(-3.0) and ls["train min"] == 10.0
    assert ls["what it removes"] == "label smoothing 0 instead of 0.2"
    assert protocol == (
        "3 runs, each on 10,000 training images for 10 epochs, tested on 10,000 test images; "
        "seeds 0, 1; trained on CPU: test"
    )
    one_run = {"rows": rows[:2], "summary": ab.summary(rows[:2]), "protocol": {"limit": 10000, "epochs": None}}
    protocol, _ = report.ablation_table(one_run)
    assert "smaller budget" in protocol and "One run per variant" in protocol
    from cifar_dash.artifacts import ArtifactError

    for r in rows:
        del r["n_train"]  # valid JSON, but not what the script writes
    with pytest.raises(ArtifactError, match="not in the expected form.*n_train"):
        report.ablation_table({"rows": rows, "summary": ab.summary(rows)})


def test_epochs_per_phase():
    r = stages.get("mobilenetv2_finetune").recipe
    assert [p.epochs for p in r.with_epochs(4).phases] == [4, 4]
    assert [p.epochs for p in r.with_epochs((2, 7)).phases] == [2, 7]
    assert [p.epochs for p in r.with_epochs((0, 7)).phases] == [r.phases[0].epochs, 7]  # 0 keeps the recipe's
    with pytest.raises(ValueError, match="3 epoch counts for 2 phases \\(head, finetune\\)"):
        r.with_epochs((1, 2, 3))
    with pytest.raises(ValueError, match="at least 1"):
        r.with_epochs(-1)
    assert stages.recipe_for(stages.get("mlp"), (5,)).epochs == 5


def test_cli_epochs_argument():
    from cifar_dash import cli

    parse = cli.build_parser().parse_args
    assert parse(["train", "mlp", "--epochs", "3"]).epochs == 3
    assert parse(["train", "mobilenetv2_finetune", "--epochs", "5,0"]).epochs == (5, 0)
    for bad in ("0", "x", "3,-1"):
        with pytest.raises(SystemExit):
            parse(["train", "mlp", "--epochs", bad])
