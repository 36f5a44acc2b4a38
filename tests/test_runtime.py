from cifar_dash import cli, runtime, train


def test_bfloat16_warning_only_where_bfloat16_is_emulated():
    cpu = {"gpu": None, "cpu_isa": "AVX-512"}
    note = runtime.bfloat16_warning(cpu)
    assert "AVX-512 but neither AVX512-BF16 nor AMX" in note and "slower than in float32" in note
    assert "AVX2 but" in runtime.bfloat16_warning({**cpu, "cpu_isa": "AVX2"})
    for isa in runtime.BF16_ISAS:
        assert runtime.bfloat16_warning({**cpu, "cpu_isa": isa}) is None
    assert runtime.bfloat16_warning({**cpu, "gpu": "NVIDIA H100"}) is None
    assert runtime.bfloat16_warning({**cpu, "cpu_isa": None}) is None  # unknown CPU: no guess


def test_bfloat16_warning_defaults_to_this_machine(monkeypatch):
    monkeypatch.setattr(runtime, "info", lambda: {"gpu": None, "cpu_isa": "AVX2"})
    assert "AVX2" in runtime.bfloat16_warning()


def test_train_cli_notes_emulated_bfloat16_only_when_asked_for(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(runtime, "info", lambda: {"gpu": None, "cpu_isa": "AVX-512"})
    monkeypatch.setattr(train, "train", lambda stage, **kw: tmp_path)
    assert cli.main(["train", "mlp", "--mixed-precision"]) == 0
    assert "note: --mixed-precision: this CPU has AVX-512" in capsys.readouterr().err
    assert cli.main(["train", "mlp"]) == 0
    assert "note:" not in capsys.readouterr().err


def test_stored_measurements_are_named_by_device_and_backend_and_keep_the_machine():
    cpu = {"machine": "CPU: AMD EPYC (2 cores, AVX2)", "cpu": "AMD EPYC", "cpu_isa": "AVX2", "cpu_count": 2,
           "gpu": None, "backend": "tensorflow", "platform": "Linux", "versions": {"keras": "3"}}  # fmt: skip
    assert runtime.results_name("accelerator", cpu) == "accelerator-amd-epyc-tensorflow.json"
    gpu = {**cpu, "gpu": "NVIDIA H200", "backend": "jax"}
    assert runtime.results_name("tune-speedrun", gpu) == "tune-speedrun-nvidia-h200-jax.json"
    kept = runtime.record_machine(gpu)
    assert set(kept) == set(runtime.RECORD_FIELDS) and kept["gpu"] == "NVIDIA H200" and "versions" not in kept
