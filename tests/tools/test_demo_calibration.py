"""scripts/train_demo_vl.py's calibration rule: which bias0 shift the shipped demo gets."""

from __future__ import annotations

from tests.conftest import load_script

ROWS = [  # the teacher keeps more, and the detections above 0.5 are less precise, as the shift rises
    {"shift": -0.75, "detections": 82, "right": 82, "keep": 0.58},
    {"shift": -0.5, "detections": 124, "right": 124, "keep": 0.78},
    {"shift": -0.25, "detections": 172, "right": 171, "keep": 0.86},
    {"shift": 0.0, "detections": 207, "right": 200, "keep": 0.92},
]


def test_keep_rule_takes_the_lowest_shift_whose_teacher_keeps_enough() -> None:
    choose = load_script("train_demo_vl").choose_shift
    assert choose(ROWS, precision=0.98, keep=0.85) == -0.25
    assert choose(ROWS, precision=0.98, keep=0.86) == -0.25  # at the floor counts
    assert choose(ROWS, precision=0.98, keep=0.9) == 0.0
    assert choose(ROWS, precision=0.98, keep=0.5) == -0.75
    # No shift keeps enough: the one that keeps the most (the highest measured).
    assert choose(ROWS, precision=0.98, keep=0.99) == 0.0
    # Rows measured without the teacher never satisfy the keep rule.
    assert choose([{"shift": -1.0, "detections": 3, "right": 3}, *ROWS], precision=0.98, keep=0.85) == -0.25


def test_precision_rule_takes_the_largest_precise_shift() -> None:
    choose = load_script("train_demo_vl").choose_shift
    assert choose(ROWS, precision=0.99, keep=0.0) == -0.25  # 171 / 172 = 0.994
    assert choose(ROWS, precision=1.0, keep=0.0) == -0.5
    # None precise enough: the most precise one; an empty row counts as 0.
    rows = [{"shift": -1.0, "detections": 0, "right": 0}, {"shift": 0.0, "detections": 10, "right": 9}]
    assert choose(rows, precision=0.95, keep=0.0) == 0.0
