"""request.py: one training request, its command line both ways, and its checks."""

import argparse

import pytest

from cifar_dash import continuation, stages
from cifar_dash.request import RequestError, TrainingRequest, add_arguments


@pytest.mark.parametrize(
    "request_",
    [
        TrainingRequest("mlp"),
        TrainingRequest("mobilenetv2_finetune", epochs=(2, 3), limit=400, evaluate=False, speed="recipe"),
        TrainingRequest("cnn", resume=True, data_path="/data/cifar.npz", devices="all", xla=False),
        TrainingRequest("resnet50v2", resume="20260101-000000-abcd", xla=True, mixed_precision=True, seed=3),
        TrainingRequest("mlp", continue_from="published", batch_size=32, save_every=50, out_dir="/tmp/ck", run_id="r1"),
    ],
)
def test_a_request_survives_its_command_line(request_):
    assert TrainingRequest.from_argv(request_.to_argv()) == request_


def test_every_field_has_one_flag_and_the_parser_knows_them_all():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {a.dest for a in parser._actions if a.dest != "help"}
    assert flags == {f for f in TrainingRequest.__dataclass_fields__}


def test_the_speed_is_always_on_the_command_line():
    """A job's child process must not fall back to its own environment's default."""
    argv = TrainingRequest("mlp", speed="recipe").to_argv()
    assert argv[argv.index("--speed") + 1] == "recipe"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stage": "nope"}, "unknown stage 'nope'"),
        ({"stage": "mlp", "limit": 0}, "limit must be a whole number of 1 or more"),
        ({"stage": "mlp", "seed": -1}, "seed must be a whole number of 0 or more"),
        ({"stage": "mlp", "speed": "fast"}, "speed must be one of auto, recipe"),
        ({"stage": "mlp", "resume": True, "continue_from": "published"}, "not both"),
        ({"stage": "mlp", "batch_size": -4}, "batch size must be at least 1"),
        ({"stage": "resnet50v2", "backbone": "vgg16"}, "takes backbone"),
        ({"stage": "mobilenetv2_finetune", "epochs": (1, 2, 3)}, "phase"),
    ],
)
def test_validate_names_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainingRequest(**kwargs).validate()


def test_continuation_problems_say_what_stops_continuing():
    stage = stages.get("mlp")
    published = {"recipe": {"phases": [{"epochs": 3}]}, "limit": 400}
    assert continuation.continuation_problems(published, stage, 5, 400) == []
    problems = continuation.continuation_problems(published, stage, 2, None)
    assert len(problems) == 2
    assert "3 epochs" in problems[0] and "more than 3" in problems[0]
    assert problems[1] == "the published run was trained on the first 400 images: set 'Limit images' to 400"
    assert continuation.continuation_problems({**published, "limit": None}, stage, 5, 100) == [
        "the published run was trained on all images: set 'Limit images' to 0"
    ]
    assert isinstance(RequestError("x"), ValueError)
