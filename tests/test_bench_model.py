"""benchmarks/speed/bench_model's worker: a basis-kernel row is timed at the implicit model's parameter count
(its widths searched by groups_report.search_widths; the import once pointed at a module path that no longer
exists, and every basis row printed '-')."""

import pytest

from benchmarks.speed import bench_model


@pytest.mark.parametrize("group", ["o2", "trivial"])
def test_basis_row_is_parameter_matched_and_timed(group):
    res = bench_model.worker({"group": group, "kernel": "basis", "threads": 1, "batch": 2, "points": 64, "k": 4,
                              "repeats": 1, "mode": "throughput"})
    assert abs(res["params"] / res["implicit_params"] - 1) <= 0.10
    assert res["train_s"] > 0 and res["infer_s"] > 0
