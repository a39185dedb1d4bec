"""torchrun training with 2 CPU processes (gloo): the same first step as one process with the whole
batch, files from rank 0 only, and a killed run that resumes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import SAMPLE

SCRIPT = """
import sys
from pcsym.config import ModelConfig, TrainConfig
from pcsym.training.train import train
data, out = sys.argv[1], sys.argv[2]
# no dropout, farthest-point order: nothing random is drawn differently by 1 or 2 processes
mcfg = ModelConfig(group="m", points=256, widths=(8, 16), strides=(2, 4), invariant_dims=16, sampling="fps",
                   dropout=0.0)
train(mcfg, TrainConfig(data=data, out=out, epochs=1, max_steps=1, batch_size=8, threads=1, bn_batches=1))
"""
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_two_processes_take_the_same_first_step_as_one(tmp_path, sample_dataset):
    script = tmp_path / "step.py"
    script.write_text(SCRIPT)
    one = subprocess.run([sys.executable, str(script), str(sample_dataset), str(tmp_path / "one")], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(TORCHRUN + [str(script), str(sample_dataset), str(tmp_path / "two")], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    # A bias right before a batch norm (conv.contract: its constant part; head.fc.bias) has a zero gradient
    # in exact arithmetic, so Adam's first, sign-like step moves it by ±lr on float noise alone, and the
    # norms' running means follow it. Everything else must agree: data sharding, gradient all-reduce, and
    # global-batch norm statistics all show in these.
    noise = ("conv.contract.", "head.fc.bias", "running_mean")
    params = [k for k in a["state_dict"] if a["state_dict"][k].is_floating_point() and not any(n in k for n in noise)]
    assert len(params) > 20 and any("norm.weight" in k for k in params) and any("running_var" in k for k in params)
    for k in params:
        torch.testing.assert_close(b["state_dict"][k], a["state_dict"][k], rtol=1e-4, atol=1e-5, msg=k)
    assert a["history"][0]["train_loss"] == pytest.approx(b["history"][0]["train_loss"], rel=1e-5)  # same batch
    assert a["history"][0]["val_acc"] == b["history"][0]["val_acc"]  # sharded validation, gathered


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may wait for a container's init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads worker processes from /proc")
def test_killed_launcher_stops_its_workers_and_the_run_resumes(tmp_path, sample_dataset):
    import json

    out = tmp_path / "run"
    cmd = TORCHRUN + ["-m", "pcsym", "-q", "train", "--data", str(sample_dataset), "--out", str(out),
                      "--group", "m", "--points", "256", "--widths", "8,16", "--batch-size", "8", "--threads", "1",
                      "--max-steps", "3"]
    # far more epochs than the test waits for: orphaned workers would still be training when it looks
    proc = subprocess.Popen(cmd + ["--epochs", "500"], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "metrics.csv").exists():
        time.sleep(0.5)
    workers = _children(proc.pid)
    # SIGKILL the launcher alone (the OOM killer's choice): torchrun starts its workers in sessions of their
    # own, so they outlive it unless they watch for it; left running they would race the resumed run
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert len(workers) == 2, workers
    deadline = time.time() + 15
    while time.time() < deadline and any(_running(w) for w in workers):
        time.sleep(0.2)
    alive = [w for w in workers if _running(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, "torchrun workers kept running after their launcher was killed"
    assert (out / "last.pt").exists(), "the run wrote no checkpoint before the deadline"
    done = len((out / "metrics.csv").read_text().strip().splitlines()) - 1
    assert done >= 1
    resumed = subprocess.run(cmd + ["--epochs", str(done + 2), "--resume"], env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + done + 2  # header + every epoch, none twice
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
