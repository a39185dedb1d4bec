"""Peers on the same data and budget (issue 14): DGCNN (torch_geometric EdgeConv on pcsym's kNN graph)
and PointNet, trained on the same split with the same augmentation as a pcsym run, for the same
wall-clock budget, evaluated with the same protocols.

Same data: the run's 80/20 split (``pcsym.data.splits``, seed), the same training clouds and augmentation
(``PointCloudDataset``: resampled points, jitter, scale, the rotation of the protocol) and the same
validation clouds (``transforms.eval_dataset``). Inputs: xyz and normals, like pcsym's models. Each
model trains epoch by epoch until ``--minutes`` of training time are spent (validation not counted;
``--clock cpu`` counts the process's CPU time instead of wall time, for runs that share the machine),
keeps its best-validation-mAcc epoch, and is then evaluated under each protocol: a model trained with z
rotations on z- and SO(3)-rotated validation clouds, one trained with SO(3) rotations
on SO(3)-rotated clouds. No test split is read. Usage:

    python -m benchmarks.accuracy.peers --data ../shared/data/modelnet10_hdf5_1024 [--minutes 60] [--models dgcnn,pointnet]
        [--train-rotations so3,z] [--threads 2] [--seed 0] [--clock wall|cpu] [--beside "what else ran"]

The pcsym side of the table comes from pcsym runs given with ``--pcsym RUN[,RUN]`` (their metrics.csv:
best validation mAcc reached within the same training time, and the run's eval rotation).
"""

from __future__ import annotations

import csv
import fcntl
import math
import time
from pathlib import Path
from types import SimpleNamespace

from benchmarks import common as C


def build_peer(name: str, num_classes: int, k: int = 10):
    import torch
    from torch import nn
    from torch_geometric.nn import EdgeConv

    from pcsym.geometry.graph import knn

    def mlp(*dims, last_act=True):
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if last_act or i < len(dims) - 2:
                layers += [nn.BatchNorm1d(b), nn.LeakyReLU(0.2)]
        return nn.Sequential(*layers)

    class Peer(nn.Module):
        def __init__(self):
            super().__init__()
            self.cfg = SimpleNamespace(class_names=[str(i) for i in range(num_classes)], sampling=None)
            self.head = nn.Sequential(mlp(2 * EMB, 256, 128), nn.Dropout(0.5), nn.Linear(128, num_classes))

        def pooled(self, x, b):  # x (B*N, EMB) -> (B, 2*EMB): max and mean pooling
            x = x.view(b, -1, x.shape[-1])
            return torch.cat([x.max(1).values, x.mean(1)], -1)

    EMB = 512

    class PointNet(Peer):
        """Vanilla PointNet (no T-nets: they do not make it rotation invariant either): shared MLP on
        (xyz, normal) per point -> max/mean pooling -> MLP."""

        def __init__(self):
            super().__init__()
            self.point = mlp(6, 64, 64, 128, EMB)

        def forward(self, pos, normals, order=None):
            b, n, _ = pos.shape
            x = torch.cat([pos - pos.mean(1, keepdim=True), normals], -1).reshape(b * n, 6)
            return self.head(self.pooled(self.point(x), b))

    class DGCNN(Peer):
        """DGCNN with EdgeConv layers (max aggregation of h([x_i, x_j - x_i])) on pcsym's kNN graph of the
        points (k neighbours, static), skip-concatenated into an embedding, pooled, MLP."""

        def __init__(self):
            super().__init__()
            dims = [6, 64, 64, 128]
            self.convs = nn.ModuleList(EdgeConv(mlp(2 * a, b), aggr="max") for a, b in zip(dims[:-1], dims[1:]))
            self.embed = mlp(sum(dims[1:]), EMB)

        def forward(self, pos, normals, order=None):
            b, n, _ = pos.shape
            idx = knn(pos, pos, k)  # (B, N, k), the same graph code pcsym's layers use
            centre = torch.arange(b * n, device=pos.device).repeat_interleave(k)
            nb = (idx + (torch.arange(b, device=pos.device) * n)[:, None, None]).reshape(-1)
            edge_index = torch.stack([nb, centre])  # messages flow from neighbour j to centre i
            x = torch.cat([pos - pos.mean(1, keepdim=True), normals], -1).reshape(b * n, 6)
            feats = []
            for conv in self.convs:
                x = conv(x, edge_index)
                feats.append(x)
            return self.head(self.pooled(self.embed(torch.cat(feats, -1)), b))

    return {"pointnet": PointNet, "dgcnn": DGCNN}[name]()


def train_peer(name, data, args, train_rotate: str, log) -> dict:
    import torch

    from pcsym.training.evaluate import evaluate_model
    from pcsym.data.splits import split_indices
    from pcsym.training.loader import make_loader
    from pcsym.training.parts import seed_all
    from pcsym.data.transforms import PointCloudDataset, eval_dataset

    seed_all(args.seed)
    tr = split_indices(data, "train", 0.2, args.seed)
    va = split_indices(data, "val", 0.2, args.seed)
    train_ds = PointCloudDataset(data, tr, points=1024, rotate=train_rotate, jitter=0.01, scale=(0.8, 1.2),
                                 resample=True, seed=args.seed)
    model = build_peer(name, len(data.class_names))
    model.cfg.class_names = [str(c) for c in data.class_names]
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    budget = args.minutes * 60
    steps_per_epoch = len(train_ds) // 16
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    val_ds = eval_dataset(data, va, 1024, train_rotate, args.seed)
    clock = time.process_time if args.clock == "cpu" else time.time
    spent, wall, history, best, best_state = 0.0, 0.0, [], -1.0, None
    epoch = 0
    while spent < budget and epoch < args.max_epochs:
        model.train()
        train_ds.set_epoch(epoch)
        t0, w0 = clock(), time.time()
        for step, (pos, nrm, y) in enumerate(make_loader(train_ds, 16, True, args.seed, epoch, 0, drop_last=True)):
            now = spent + clock() - t0
            lr = 1e-3 * (0.5 * (1 + math.cos(math.pi * min(1.0, now / budget))) * 0.99 + 0.01)  # cosine in time
            for g in opt.param_groups:
                g["lr"] = lr
            loss = loss_fn(model(pos, nrm), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if spent + clock() - t0 >= budget or (args.quick and step >= 3):
                break
        spent += clock() - t0
        wall += time.time() - w0
        m = evaluate_model(model, val_ds, batch_size=32)
        history.append({"epoch": epoch + 1, "train_minutes": spent / 60, "val_macc": m["mean_class_accuracy"],
                        "val_oa": m["overall_accuracy"]})
        log(f"  {name} ({train_rotate}) epoch {epoch + 1}: {spent / 60:.1f} min, val mAcc {m['mean_class_accuracy']:.3f}")
        if m["mean_class_accuracy"] > best:
            best, best_state = m["mean_class_accuracy"], {k: v.clone() for k, v in model.state_dict().items()}
        epoch += 1
        if args.quick:
            break
    model.load_state_dict(best_state)
    protocols = {}
    for rot in (["z", "so3"] if train_rotate == "z" else ["so3"]):
        m = evaluate_model(model, eval_dataset(data, va, 1024, rot, args.seed), batch_size=32)
        protocols[f"{train_rotate}/{rot}"] = {"oa": m["overall_accuracy"], "macc": m["mean_class_accuracy"]}
    return {"model": name, "train_rotate": train_rotate, "params": params, "epochs": epoch,
            "train_minutes": spent / 60, "clock": args.clock, "wall_minutes": wall / 60, "history": history,
            "protocols": protocols}


def pcsym_rows(runs: list[str], minutes: float, clock: str = "wall") -> list[dict]:
    """Best validation mAcc of each pcsym run within ``minutes`` of training: its epochs' CPU time
    (``cpu_seconds``, for ``clock`` cpu, where the run recorded it) or wall time (``epoch_seconds``) summed."""
    import json

    rows = []
    for run in map(Path, runs):
        cfg = json.loads((run / "config.json").read_text())
        with (run / "metrics.csv").open() as fh:
            hist = list(csv.DictReader(fh))
        spent, best = 0.0, None
        key = "cpu_seconds" if clock == "cpu" and all(h.get("cpu_seconds") for h in hist) else "epoch_seconds"
        for h in hist:
            spent += float(h[key])
            if spent / 60 > minutes:
                break
            if best is None or float(h["val_macc"]) > float(best["val_macc"]):
                best = dict(h, minutes=spent / 60)
        if best:
            rot = f"{cfg['train']['rotate']}/{cfg['train']['eval_rotate']}"
            rows.append({"model": f"pcsym {cfg['model']['group']} ({run.name})", "protocol": rot,
                         "macc": float(best["val_macc"]), "oa": float(best["val_acc"]),
                         "train_minutes": best["minutes"], "params": C.run_parameters(run),
                         "trained": "", "beside": f"pcsym run {run} ({'CPU' if key == 'cpu_seconds' else 'wall'} "
                                                    "time of its epochs)"})
    return rows


def merge_previous(path: Path, results: list[dict], args) -> tuple[list[dict], list[str]]:
    """Results of earlier invocations (same data, budget, clock and seed) for models/rotations not rerun
    now, so the SO(3) and z halves can be trained at different times (each keeps its own environment
    record), and the union of the pcsym runs named by all of them."""
    import json

    runs = [r for r in args.pcsym.split(",") if r]
    if not path.exists():
        return results, runs
    old = json.loads(path.read_text())
    if (old.get("data"), old.get("minutes"), old.get("seed"), old.get("clock", "wall")) != (
            args.data, args.minutes, args.seed, args.clock):
        return results, runs
    done = {(r["model"], r["train_rotate"]) for r in results}
    kept = [r for r in old.get("results", []) if (r["model"], r["train_rotate"]) not in done]
    return kept + results, [r for r in old.get("pcsym_runs", []) if r not in runs] + runs


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--minutes", type=float, default=60.0, help="training budget per model and rotation")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="what the budget counts: wall time, or the process's CPU time (with --threads 1, the wall "
                        "time of a core of its own, so other jobs may share the machine without shortening it)")
    p.add_argument("--models", default="dgcnn,pointnet",
                   help="peers to train ('' for none: only (re)tabulate the --pcsym runs beside the earlier rows)")
    p.add_argument("--train-rotations", default="so3,z")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--pcsym", default="", help="pcsym run folders to put in the table (comma-separated)")
    p.add_argument("--beside", default="", help="what shared the machine while these models trained (recorded)")
    args = p.parse_args()
    C.set_threads(args.threads)
    C.quiet_warnings()
    from pcsym.data.datasets import load_dataset

    env = C.environment(args.threads, args.quick, args.idle)
    data = load_dataset(args.data, points=1024)
    results = []
    for rot in args.train_rotations.split(","):
        for name in filter(None, args.models.split(",")):
            r = train_peer(name, data, args, rot, lambda s: print(s, flush=True))
            results.append({**r, "trained": env["date_utc"], "threads": args.threads, "beside": args.beside,
                            "load_avg_1min_at_start": env.get("load_avg_1min_at_start")})
    stem = "peers_quick" if args.quick else "peers"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / f".{stem}.lock").open("w") as lock:  # invocations running side by side merge one at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        return write_table(args, env, *merge_previous(out / f"{stem}.json", results, args), out)


def write_table(args, env: dict, results: list[dict], pcsym_runs: list[str], out: Path) -> int:
    rows = [{"model": r["model"], "protocol": proto, "macc": v["macc"], "oa": v["oa"],
             "train_minutes": r["train_minutes"], "wall_minutes": r.get("wall_minutes"), "params": r["params"],
             "trained": r.get("trained", ""),
             "beside": r.get("beside", "")}
            for r in results for proto, v in r["protocols"].items()]
    rows += pcsym_rows(pcsym_runs, args.minutes, args.clock)
    md = "\n\n".join([
        f"# Peers on the same split, augmentation and training budget "
        f"({args.minutes:g} min of {args.clock} time per model)",
        C.env_markdown(env),
        "Validation split of the run (seed " + str(args.seed) + ", 20%), train/eval rotation per protocol; the "
        "best-validation-mAcc epoch of each model within the budget. Validation, not the official test split. "
        "Rows of earlier invocations with the same data, budget and seed are kept (their date and what ran "
        "beside them are in the table).",
        C.table(rows, [("model", "model"), ("protocol", "train/eval rotation"), ("macc", "val mAcc"),
                       ("oa", "val OA"), ("train_minutes", f"training min ({args.clock})"),
                       ("wall_minutes", "wall min"), ("params", "params"),
                       ("trained", "trained (UTC)"), ("beside", "sharing the machine")])])
    data_out = {"benchmark": "peers", "env": env, "data": args.data, "minutes": args.minutes, "seed": args.seed,
                "clock": args.clock, "pcsym_runs": pcsym_runs, "results": results, "rows": rows}
    jp, mp = C.write_results(out, "peers", data_out, md, args.quick)
    print(md)
    print(f"wrote {jp} and {mp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
