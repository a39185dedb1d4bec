import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
SHARED = ROOT.parent / "shared"

os.environ.setdefault("OMP_NUM_THREADS", "2")
# escnn layer specs and dataset caches go to a fresh folder per test session, not the user's ~/.cache
os.environ.setdefault("PCSYM_CACHE_DIR", tempfile.mkdtemp(prefix="pcsym-test-cache-"))


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory):
    """The shipped ModelNet10 subset, prepared once into a cache in a temp dir."""
    from pcsym.data.datasets import prepare

    out = tmp_path_factory.mktemp("cache") / "mini.npz"
    return prepare(SAMPLE / "modelnet10_mini", out=out, points=1024)


@pytest.fixture(scope="session")
def sample_mesh():
    return SAMPLE / "meshes" / "bed_0001.off"
