"""markdown.py: durations and counts with their units, and the generated tables' cells."""

from cifar_dash import markdown


def test_durations_take_the_unit_of_their_size_or_of_the_value_beside_them():
    assert [markdown.seconds(s) for s in (None, 42, 89.6, 90, 600, 5399, 5400, 7200)] == [
        "-", "42 s", "90 s", "1.5 min", "10.0 min", "90.0 min", "1.5 h", "2.0 h",
    ]  # fmt: skip
    assert markdown.seconds_pair(63, 96) == "1.1 min / 1.6 min"  # never "63 s / 1.6 min"
    assert markdown.seconds_pair(None, 7200) == "- / 2.0 h" and markdown.seconds_pair(None, None) == "- / -"


def test_counts_and_cells():
    assert [markdown.plural(n, "epoch") for n in (0, 1, 2)] == ["0 epochs", "1 epoch", "2 epochs"]
    assert markdown.pct(0.9512) == "95.12%" and markdown.pct(None) == "-"
    assert markdown.table(["a", "b"], [["x|y", "1\n2"]]) == "| a | b |\n|---|---|\n| x\\|y | 1 2 |"
