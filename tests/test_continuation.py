"""continuation.py: what a continuation may start from."""

import io

import pytest

from cifar_dash import continuation


def test_extension_problem():
    assert continuation.extension_problem([5, 3], [5, 4]) is None
    assert continuation.extension_problem([1], [2]) is None
    assert (
        "has 5,3 epochs per phase; a continuation adds epochs to the last phase only, not 5,3 (e.g. 5,4)"
        in continuation.extension_problem([5, 3], [5, 3])
    )
    assert "not 6,6 (e.g. 5,4)" in continuation.extension_problem([5, 3], [6, 6])
    assert (
        continuation.extension_problem([3], [2]) == "the published run has 3 epochs; a continuation needs more than 3, not 2"
    )


def test_a_continuation_that_does_not_fit_is_refused_before_the_run_folder_exists(tmp_path):
    from cifar_dash import runplan, runs
    from cifar_dash.request import TrainingRequest

    out = tmp_path / "mlp"
    request = TrainingRequest("mlp", continue_from=str(tmp_path / "nothing"), out_dir=str(out))
    with pytest.raises(continuation.ContinueError, match="holds no finished run to continue"):
        runplan.plan(request, stream=io.StringIO())
    assert list(runs.runs_root("mlp", where=out).iterdir()) == []  # the runs folder is writable, and holds no run
