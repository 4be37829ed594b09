"""Readable numbers (present/numbers.py): one way for the dashboard, the report and the console."""

from __future__ import annotations

from mesh_canary.present import numbers


def test_numbers_read_as_people_write_them() -> None:
    assert numbers.percent(0.0235) == "2.35%" and numbers.percent(0.00052) == "0.052%"
    assert numbers.percent(0.5) == "50%" and numbers.percent(0.005, signed=True) == "+0.5%"
    assert numbers.millis(12.345) == "12.3 ms" and numbers.millis(250.0) == "250 ms"
    assert numbers.millis(1500.0) == "1.5 s"
    assert numbers.count(58.43) == "58" and numbers.count(12345.6) == "12,346"
    assert numbers.ratio(1.2) == "1.2x" and numbers.ratio(1.234) == "1.23x"
    assert numbers.interval(0.015, 0.033, "rate") == "1.5%-3.3%"
    assert numbers.interval(-0.007639, 0.01903, "rate", signed=True) == "-0.764% to +1.9%"
    assert numbers.interval(None, 0.02, "rate") == "at most 2%"
    assert numbers.interval(0.2, None, "ratio") == "at least 0.2x"
    assert numbers.in_unit(None, "ms") == numbers.NONE and numbers.percent(float("nan")) == "n/a"
    assert numbers.duration(150) == "2m30s"
