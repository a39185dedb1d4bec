"""benchmarks/speed/bench_conv's worker: every group of the paper's comparison gives a row (the trivial group,
whose only element is the identity, used to fail with an IndexError and print '-')."""

import pytest

from benchmarks.speed import bench_conv


@pytest.mark.parametrize("group", ["trivial", "f"])
@pytest.mark.parametrize("method", ["implicit", "basis"])
def test_worker_times_and_checks_every_group(group, method):
    res = bench_conv.worker({"group": group, "method": method, "threads": 1, "batch": 1, "points": 64, "k": 4,
                             "channels": 4, "repeats": 1, "mm_min_s": 0.001, "square_mm": 32})
    assert res["params"] > 0 and res["median_s"] > 0
    assert res["equiv_rel_err"] < 1e-5
