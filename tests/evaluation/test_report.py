"""The ODinW suite average (report.suite_summary): the plain mean of the datasets' AP, as the
GLIP README and paper report it, on a hand case with an AP of exactly 0."""

from __future__ import annotations

import pytest

from glip.evaluation import format_suite, suite_summary


def test_suite_average_is_the_unweighted_mean_of_dataset_ap() -> None:
    # A dataset at AP 0 counts (it lowers the average); -1 (no ground truth) is left out.
    values = {"aquarium": 0.5, "pothole": 0.0, "thermal": 0.25, "empty": -1.0}
    summary = suite_summary(values)
    assert summary["average"] == pytest.approx((0.5 + 0.0 + 0.25) / 3)
    assert summary["median"] == 0.25
    assert suite_summary({"a": -1.0}) == {"average": -1.0, "median": -1.0}
    rows = {name: {"AP": v} for name, v in values.items()}
    table = format_suite(rows, ("AP",), median=True).splitlines()
    assert table[-2].split() == ["Average", "25.0"] and table[-1].split() == ["Median", "25.0"]
