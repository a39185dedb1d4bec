"""The shipped models on test-dev (slow; needs ../shared/data/modelnet{40,10}_testdev_hdf5_1024).

The floors sit about 1.5 points under the figures the README reports (evaluation seeds 0-2): ModelNet40 o2 z/z
88.3 ± 0.4%, so3 SO3/SO3 85.0 ± 0.5% (both ensembles of two seeds); ModelNet10 o2-mn10 z/z 92.4 ± 0.2%, so3-mn10
SO3/SO3 90.7 ± 0.3% (the so3 ensemble cut to ModelNet10's classes). A regression in the model files, the runtime
or the evaluation draws fails here, the spread of one evaluation pass does not."""

import pytest

from pcsym.training.evaluate import evaluate_checkpoint

from .conftest import SHARED

TESTDEV = SHARED / "data" / "modelnet40_testdev_hdf5_1024"
TESTDEV10 = SHARED / "data" / "modelnet10_testdev_hdf5_1024"


@pytest.mark.slow
@pytest.mark.parametrize("model,data,rotate,floor,n,gap", [
    ("o2", TESTDEV, "z", 0.868, 1234, 0.04),
    ("so3", TESTDEV, "so3", 0.835, 1234, 0.04),  # mAcc near OA (so3: 3.1 points at seed 0)
    ("o2-mn10", TESTDEV10, "z", 0.91, 454, 0.02),
    ("so3-mn10", TESTDEV10, "so3", 0.892, 454, 0.02),
])
def test_shipped_models_on_test_dev(model, data, rotate, floor, n, gap):
    if not data.exists():
        pytest.skip(f"{data.name} not present")
    m = evaluate_checkpoint(model, data, rotate=rotate, seed=0)
    assert m["split"] == "test" and m["n"] == n and len(m["class_names"]) == (40 if n == 1234 else 10)
    assert m["overall_accuracy"] >= floor
    assert m["overall_accuracy"] - m["mean_class_accuracy"] < gap
