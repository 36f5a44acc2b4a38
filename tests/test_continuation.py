"""continuation.py: what a continuation may start from."""

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
