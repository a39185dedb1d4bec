"""The CUDA path against the CPU one, on a machine with a GPU: the shipped models' logits on the same 16
clouds and the same sampling order on both devices, equivariance on the GPU, and the median time of a
training step (forward + backward + AdamW, batch 16) on the chosen device.

    python -m benchmarks.speed.cuda_check DATA [--device cuda|cpu]

DATA: any dataset folder `pcsym evaluate` reads (1024 points). Prints one JSON line per model. Run it once
with --device cuda and once with --device cpu on the same machine: the step times are compared only as
that ratio. Results of the one run so far: benchmarks/results/cuda_check.md.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def _escnn_on_new_sklearn() -> None:
    """scikit-learn >= 1.7 rejects the np.matrix escnn hands to randomized_svd on a fresh basis cache
    (pcsym pins scikit-learn < 1.7; a GPU machine's own environment may not)."""
    import escnn.group._numerical as n

    if getattr(n, "randomized_svd", None) is not None:
        f = n.randomized_svd
        n.randomized_svd = lambda M, *a, **k: f(np.asarray(M), *a, **k)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    a = p.parse_args()
    _escnn_on_new_sklearn()
    from pcsym.models.checkpoint import load_model
    from pcsym.data.datasets import load_dataset
    from pcsym.data.transforms import rotation_matrix

    dev = a.device
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    d = load_dataset(a.data, points=1024)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(d.labels), 16, replace=False)
    pos, nrm = torch.tensor(d.points[idx]), torch.tensor(d.normals[idx])
    y = torch.tensor(d.labels[idx]).to(dev)
    for name, rot in (("so3", "so3"), ("o2", "z")):
        cpu, _ = load_model(name, "cpu")
        model, _ = load_model(name, dev)
        order = cpu.point_order(pos)
        with torch.no_grad():
            ref = cpu(pos, nrm, order=order)
            out = model(pos.to(dev), nrm.to(dev), order=order.to(dev)).cpu()
            M = torch.tensor(rotation_matrix(rot, rng), dtype=torch.float32)
            rot_out = model((pos @ M.T).to(dev), (nrm @ M.T).to(dev), order=order.to(dev)).cpu()
            own = model(pos.to(dev), nrm.to(dev)).cpu()  # the evaluate path: the device draws its own order
        r = dict(cpu_vs_device_rel=float((ref - out).abs().max() / ref.abs().max()),
                 argmax_agree=int((ref.argmax(1) == out.argmax(1)).sum()),
                 equiv_rel=float((rot_out - out).abs().max() / out.abs().max()),
                 own_order_argmax_agree=int((own.argmax(1) == ref.argmax(1)).sum()), n=16)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), 1e-4)
        P, N = pos.to(dev), nrm.to(dev)
        ts = []
        for _ in range(12):
            sync()
            t = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(P, N), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sync()
            ts.append(time.perf_counter() - t)
        r["train_step_ms_median_of_10"] = 1000 * float(np.median(ts[2:]))
        print(name, json.dumps(r), flush=True)
    print("device", dev, torch.cuda.get_device_name(0) if dev == "cuda" else "", "torch", torch.__version__)


if __name__ == "__main__":
    main()
