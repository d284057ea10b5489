"""benchmarks/latency.py's ratios and table: an int8 row is compared with the base in PyTorch, in its own backend
and precision, and in its runtime's fp32 (the yardstick a user deploying that runtime has)."""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import latency  # noqa: E402

MS = {("base", "pytorch fp32"): 20.0, ("base", "openvino fp32"): 8.0, ("base", "openvino int8"): 5.0,
      ("p", "pytorch fp32"): 10.0, ("p", "openvino fp32"): 4.0, ("p", "openvino int8"): 2.0}


@pytest.fixture
def rows(tmp_path):
    times = {k: {"ms": v, "p10": v * 0.9, "p90": v * 1.1} for k, v in MS.items()}
    files = {}
    for name, backend in MS:
        f = tmp_path / f"{name}-{backend.replace(' ', '-')}.bin"
        f.write_bytes(b"\0" * 10**6)
        files[(name, backend)] = f
    return latency.ratio_rows(320, times, "base", "pytorch fp32", files)


def test_every_row_has_its_three_ratios(rows):
    r = {(x["model"], x["backend"]): x for x in rows}
    assert (r["p", "openvino int8"]["ratio"], r["p", "openvino int8"]["ratio_same"],
            r["p", "openvino int8"]["ratio_fp32"]) == (0.1, 0.4, 0.25)
    assert (r["base", "openvino int8"]["ratio_same"], r["base", "openvino int8"]["ratio_fp32"]) == (1.0, 0.625)
    assert r["p", "pytorch fp32"]["ratio_fp32"] == r["p", "pytorch fp32"]["ratio"] == 0.5
    assert all(x["file_MB"] == 1.0 and x["imgsz"] == 320 for x in rows)


def test_without_the_reference_rows_a_ratio_is_blank_not_wrong(tmp_path):
    times = {("base", "openvino int8"): {"ms": 5.0, "p10": 4.0, "p90": 6.0},
             ("p", "openvino int8"): {"ms": 2.0, "p10": 1.0, "p90": 3.0}}
    f = tmp_path / "x.bin"
    f.write_bytes(b"\0")
    rows = latency.ratio_rows(640, times, "base", "pytorch fp32", {k: f for k in times})
    assert [(x["ratio"], x["ratio_same"], x["ratio_fp32"]) for x in rows] == [(None, 1.0, None), (None, 0.4, None)]
    assert "| 640 | p | openvino int8 | 2.0 | 1.0-3.0 | - | 0.40x | - |" in latency.table(rows)


def test_table_has_a_column_for_every_field(rows):
    rows[0].update({"mAP50": 0.9, "mAP50-95": 0.6})
    lines = latency.table(rows).splitlines()
    assert len({line.count("|") for line in lines}) == 1  # header, rule and rows line up
    assert "vs base, same runtime fp32" in lines[0] and "mAP50-95" in lines[0]
    assert lines[2].endswith("| 0.900 | 0.600 |") and lines[3].endswith("| | |")
