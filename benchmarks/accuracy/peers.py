"""Peers on the same data and budget (issue 14; test split, issue 38): a small DGCNN (EdgeConv on a dynamic
kNN graph, dense) and PointNet, trained on the same split with the same
augmentation as a pcsym run, for the same training budget, evaluated with the same protocols.

Same data: the run's train/validation split (``pcsym.data.splits``, ``--val-fraction``, seed), the same
training clouds and augmentation (``PointCloudDataset``: resampled points, jitter, scale, the rotation of the
protocol) and the same validation clouds (``transforms.eval_dataset``). Inputs: xyz and normals, like pcsym's
models. Each model trains epoch by epoch until its budget of training time is spent (validation not counted;
``--clock cpu`` counts the process's CPU time instead of wall time, for runs that share the machine); the
budget is a number of minutes or a pcsym model's own training time (``--minutes z=o2,so3=so3``). It keeps its
best-validation-mAcc epoch (``--select last``: the last) and is then evaluated under each protocol: a model
trained with z rotations on z- and SO(3)-rotated clouds, one trained with SO(3) rotations on SO(3)-rotated
clouds; on the run's validation split, and with ``--test-data`` on that dataset's test split too (mean ± std
over ``--eval-seeds``, like ``pcsym evaluate --seed``), where the pcsym models named by ``--pcsym`` are scored
beside them. ``--runs-dir`` keeps each training's state after every epoch, so the same command goes on after
an interruption. Usage:

    python -m benchmarks.accuracy.peers --data ../shared/data/modelnet10_hdf5_1024 [--minutes 60] [--models dgcnn,pointnet]
        [--train-rotations so3,z] [--threads 2] [--seed 0] [--clock wall|cpu] [--beside "what else ran"]
    python -m benchmarks.accuracy.peers --data ../shared/data/modelnet40_hdf5_1024 --test-data
        ../shared/data/modelnet40_testdev_hdf5_1024 --minutes z=o2,so3=so3 --clock cpu --threads 1 --val-fraction 0.05
        --select last --runs-dir RUNS --stem peers_mn40_testdev --pcsym o2,so3

Without ``--test-data`` the pcsym side of the table comes from pcsym run folders given with ``--pcsym RUN[,RUN]``
(their metrics.csv: best validation mAcc reached within the same training time, and the run's eval rotation).
"""

from __future__ import annotations

import csv
import fcntl
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from benchmarks import common as C


def feature_knn(x, k: int):
    """Indices (B, N, k) of each point's k nearest points in feature space ``x`` (B, N, C), itself first:
    DGCNN's dynamic graph (the distances need no gradient)."""
    import torch

    with torch.no_grad():
        sq = (x * x).sum(-1)
        d = sq[:, :, None] - 2 * x @ x.transpose(1, 2) + sq[:, None, :]
        return d.topk(k, dim=-1, largest=False).indices


def edge_conv(x, idx, h):
    """EdgeConv with max aggregation, dense: ``max_j h([x_i, x_j - x_i])`` over the neighbours ``idx`` (B, N, k)
    of each point of ``x`` (B, N, C) -> (B, N, C'). The same function as torch_geometric's ``EdgeConv(h,
    aggr="max")`` on that graph (a test checks it), without its scatter: several times faster on CPU."""
    import torch

    b, n, c = x.shape
    k = idx.shape[-1]

    def neighbours(f):  # (B, N, C) -> (B, N, k, C): each point's neighbours' rows
        return torch.gather(f, 1, idx.reshape(b, n * k, 1).expand(-1, -1, f.shape[-1])).view(b, n, k, -1)

    if isinstance(h, torch.nn.Sequential) and isinstance(h[0], torch.nn.Linear):
        # h's first layer is linear: W [x_i, x_j - x_i] + b = (W1 - W2) x_i + b + W2 x_j, computed per point
        # (k times fewer multiplications) and added up per edge; the rest of h runs on the edges as usual
        lin, flat = h[0], x.reshape(b * n, c)
        w1, w2 = lin.weight[:, :c], lin.weight[:, c:]
        own = (torch.addmm(lin.bias, flat, (w1 - w2).t()) if lin.bias is not None else flat @ (w1 - w2).t())
        e = (own.view(b, n, 1, -1) + neighbours((flat @ w2.t()).view(b, n, -1))).reshape(b * n * k, -1)
        e = h[1:](e)
    else:
        xi = x[:, :, None, :].expand(-1, -1, k, -1)
        e = h(torch.cat([xi, neighbours(x) - xi], -1).reshape(b * n * k, 2 * c))
    return e.view(b, n, k, -1).max(2).values


def build_peer(name: str, num_classes: int, k: int = 10, dynamic: bool = True):
    import torch
    from torch import nn

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
            self.cfg = SimpleNamespace(class_names=[str(i) for i in range(num_classes)], sampling=None, points=1024)
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
        """DGCNN (Wang et al. 2019), small: EdgeConv layers (max aggregation of h([x_i, x_j - x_i])) over the
        k nearest neighbours, the first in xyz (pcsym's kNN), the next in the previous layer's feature space
        (the dynamic graph; ``dynamic=False``: the xyz graph throughout), skip-concatenated into an embedding,
        pooled, MLP. k = 10 and widths 64/64/128 (the paper: 20 and 64/64/64/128, 1024-d embedding), so that
        it trains some epochs within a CPU budget."""

        def __init__(self):
            super().__init__()
            dims = [6, 64, 64, 128]
            self.convs = nn.ModuleList(mlp(2 * a, b) for a, b in zip(dims[:-1], dims[1:]))
            self.embed = mlp(sum(dims[1:]), EMB)
            self.dynamic = dynamic

        def forward(self, pos, normals, order=None):
            b, n, _ = pos.shape
            idx = knn(pos, pos, k)  # (B, N, k), the same graph code pcsym's layers use
            x = torch.cat([pos - pos.mean(1, keepdim=True), normals], -1)
            feats = []
            for i, conv in enumerate(self.convs):
                if i and self.dynamic:
                    idx = feature_knn(x, k)
                x = edge_conv(x, idx, conv)
                feats.append(x)
            return self.head(self.pooled(self.embed(torch.cat(feats, -1).reshape(b * n, -1)), b))

    return {"pointnet": PointNet, "dgcnn": DGCNN}[name]()


def training_minutes(ckpt: dict, clock: str) -> tuple[float, str]:
    """A pcsym checkpoint's training time: the sum of its epochs' CPU seconds for ``clock`` cpu (where every
    epoch recorded them), else of their wall seconds; in minutes, with the history column it summed."""
    hist = ckpt.get("history") or []
    key = "cpu_seconds" if clock == "cpu" and hist and all("cpu_seconds" in h for h in hist) else "epoch_seconds"
    return sum(float(h[key]) for h in hist) / 60, key


def budget_minutes(spec: str, clock: str) -> dict[str, float]:
    """``--minutes``: one figure for every training rotation (``60``), or one per rotation, each a number or a
    pcsym model (a shipped name or a checkpoint) whose own training time it takes (``z=o2,so3=so3``: the sum
    of its epochs' CPU time for ``--clock cpu``, wall time for ``--clock wall``)."""
    try:
        return {"*": float(spec)}
    except ValueError:
        pass
    out = {}
    for part in filter(None, spec.split(",")):
        rot, eq, val = part.partition("=")
        if not eq or rot not in ("z", "so3", "none"):
            raise ValueError(f"--minutes: expected N or ROTATION=N|MODEL[,...], got '{part}'")
        try:
            out[rot] = float(val)
        except ValueError:
            from pcsym.models.checkpoint import read_checkpoint

            ckpt = read_checkpoint(val)
            if not ckpt.get("history"):
                raise ValueError(f"--minutes: {val} records no training history")
            out[rot] = round(training_minutes(ckpt, clock)[0], 2)
    return out


def run_key(name: str, train_rotate: str, minutes: float, args) -> dict:
    """What a training depends on: a run folder holding another key is not resumed."""
    return {"model": name, "train_rotate": train_rotate, "minutes": minutes, "clock": args.clock, "data": args.data,
            "seed": args.seed, "val_fraction": args.val_fraction, "select": args.select,
            "max_epochs": args.max_epochs, "quick": bool(args.quick)}


def train_peer(name, data, args, train_rotate: str, log, minutes: float | None = None, run_dir: Path | None = None
               ) -> dict:
    """Train ``name`` with ``train_rotate`` augmentation until ``minutes`` of training time are spent.
    With ``run_dir``, the state after every epoch is kept there (``state.pt``, written atomically) and an
    interrupted training goes on from it; a finished one leaves ``result.pt`` (its chosen weights), which
    a later call reuses."""
    import torch

    from pcsym.data.splits import split_indices
    from pcsym.data.transforms import PointCloudDataset, eval_dataset
    from pcsym.files import atomic_writer
    from pcsym.training.evaluate import evaluate_model
    from pcsym.training.loader import make_loader
    from pcsym.training.parts import seed_all

    minutes = args.minutes if minutes is None else minutes
    key = run_key(name, train_rotate, minutes, args)
    seed_all(args.seed)
    tr = split_indices(data, "train", args.val_fraction, args.seed)
    va = split_indices(data, "val", args.val_fraction, args.seed)
    train_ds = PointCloudDataset(data, tr, points=1024, rotate=train_rotate, jitter=0.01, scale=(0.8, 1.2),
                                 resample=True, seed=args.seed)
    model = build_peer(name, len(data.class_names))
    model.cfg.class_names = [str(c) for c in data.class_names]
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    budget = minutes * 60
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    val_ds = eval_dataset(data, va, 1024, train_rotate, args.seed)
    clock = time.process_time if args.clock == "cpu" else time.time
    st = {"spent": 0.0, "wall": 0.0, "history": [], "best": -1.0, "best_state": None, "epoch": 0, "done": False,
          "resumed": False}

    def save(name_):
        with atomic_writer(run_dir / name_) as tmp:
            torch.save({"key": key, "model": model.state_dict(), "opt": opt.state_dict(), **st}, tmp)

    for fname in ("result.pt", "state.pt") if run_dir is not None else ():
        if (run_dir / fname).exists():
            saved = torch.load(run_dir / fname, map_location="cpu", weights_only=False)
            if saved.get("key") != key:
                log(f"  {run_dir / fname}: another configuration, not reused")
                continue
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            st.update({k: saved[k] for k in st if k in saved}, resumed=True)
            log(f"  {name} ({train_rotate}): {'finished run read back' if st['done'] else 'resumed'} from "
                f"{run_dir / fname} at epoch {st['epoch']} ({st['spent'] / 60:.1f} min spent)")
            break
    finished_before = st["done"]
    while not st["done"] and st["spent"] < budget and st["epoch"] < args.max_epochs:
        epoch = st["epoch"]
        model.train()
        train_ds.set_epoch(epoch)
        t0, w0 = clock(), time.time()
        for step, (pos, nrm, y) in enumerate(make_loader(train_ds, 16, True, args.seed, epoch, 0, drop_last=True)):
            now = st["spent"] + clock() - t0
            lr = 1e-3 * (0.5 * (1 + math.cos(math.pi * min(1.0, now / budget))) * 0.99 + 0.01)  # cosine in time
            for g in opt.param_groups:
                g["lr"] = lr
            loss = loss_fn(model(pos, nrm), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if st["spent"] + clock() - t0 >= budget or (args.quick and step >= 3):
                break
        st["spent"] += clock() - t0
        st["wall"] += time.time() - w0
        m = evaluate_model(model, val_ds, batch_size=32)
        st["history"].append({"epoch": epoch + 1, "train_minutes": st["spent"] / 60, "val_macc": m["mean_class_accuracy"],
                              "val_oa": m["overall_accuracy"]})
        log(f"  {name} ({train_rotate}) epoch {epoch + 1}: {st['spent'] / 60:.1f} min, val OA {m['overall_accuracy']:.3f} "
            f"mAcc {m['mean_class_accuracy']:.3f}")
        if args.select == "last" or m["mean_class_accuracy"] > st["best"]:
            st["best"] = m["mean_class_accuracy"]
            st["best_state"] = {k: v.clone() for k, v in model.state_dict().items()}
        st["epoch"] = epoch + 1
        if args.quick:
            break
        if run_dir is not None:
            save("state.pt")
    st["done"] = True
    if run_dir is not None and not finished_before:
        save("result.pt")
        (run_dir / "state.pt").unlink(missing_ok=True)
    model.load_state_dict(st["best_state"])
    protocols = {}
    for rot in (["z", "so3"] if train_rotate == "z" else ["so3"]):
        m = evaluate_model(model, eval_dataset(data, va, 1024, rot, args.seed), batch_size=32)
        protocols[f"{train_rotate}/{rot}"] = {"oa": m["overall_accuracy"], "macc": m["mean_class_accuracy"]}
    out = {"model": name, "train_rotate": train_rotate, "params": params, "epochs": st["epoch"], "budget_minutes": minutes,
           "train_minutes": st["spent"] / 60, "clock": args.clock, "wall_minutes": st["wall"] / 60,
           "history": st["history"], "protocols": protocols, "resumed": st["resumed"]}
    if getattr(args, "test", None) is not None:
        out["test"] = score_test(model, args.test, train_rotate, args.eval_seeds)
    return out


def score_test(model, test, train_rotate: str, eval_seeds) -> dict:
    """OA and mAcc (mean ± std over the evaluation seeds) on the test split of ``test``: z- and SO(3)-rotated
    clouds for a z-trained model, SO(3)-rotated ones for an SO(3)-trained one (`pcsym evaluate --seed`'s
    draws)."""
    from benchmarks.accuracy.protocols import score
    from pcsym.config import TrainConfig
    from pcsym.data.splits import split_indices

    idx = split_indices(test, "test", 0.0, 0)
    out = {}
    rotations = {"z": ["z", "so3"], "none": ["none"]}.get(train_rotate, ["so3"])
    for rot in rotations:
        out[f"{train_rotate}/{rot}"] = score(model, test, idx, TrainConfig(), rot, 1, list(eval_seeds))
    return out


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


def pcsym_test_rows(models: list[str], test, eval_seeds, clock: str) -> list[dict]:
    """pcsym models (shipped names or checkpoints) scored like the peers on the test split of ``test``, under
    their own training rotation's protocols; their training time is the sum of their epochs' (CPU or wall)."""
    from pcsym.models.checkpoint import load_model

    rows = []
    for spec in models:
        model, ckpt = load_model(spec)
        rot = (ckpt.get("train_config") or {}).get("rotate", "z")
        minutes, key = training_minutes(ckpt, clock)
        for proto, f in score_test(model, test, rot, eval_seeds).items():
            rows.append({"model": f"pcsym {model.cfg.group} ({spec})", "protocol": proto, **f,
                         "epochs": len(ckpt.get("history") or []),
                         "train_minutes": minutes, "params": sum(p.numel() for p in model.parameters()),
                         "trained": "", "beside": f"pcsym model {spec} ({'CPU' if key == 'cpu_seconds' else 'wall'} "
                                                  "time of its epochs)"})
    return rows


def _settings(args_or_json) -> tuple:
    """What results must share to sit in one table (older result files lack the newer settings)."""
    g = (lambda k, d=None: args_or_json.get(k, d)) if isinstance(args_or_json, dict) else \
        (lambda k, d=None: getattr(args_or_json, k, d))
    seeds = g("eval_seeds")
    return (g("data"), g("seed"), g("clock", "wall"), g("test_data"), g("val_fraction", 0.2), g("select", "best"),
            list(seeds) if seeds is not None else None)


def merge_previous(path: Path, results: list[dict], args, budgets: dict, test_rows: list[dict]
                   ) -> tuple[list[dict], list[str], list[dict]]:
    """Results of earlier invocations (same data, test data, split, selection, clock, seed and per-rotation
    budget) for models/rotations not rerun now, so the SO(3) and z halves can be trained at different times
    or side by side (each keeps its own environment record); the union of the pcsym runs named by all of
    them; and their pcsym test rows for models not scored now."""
    import json

    runs = [r for r in args.pcsym.split(",") if r]
    test_rows = list(test_rows)
    if not path.exists():
        return results, runs, test_rows
    old = json.loads(path.read_text())
    if _settings(old) != _settings(args):
        return results, runs, test_rows

    def budget_of(rot):
        return budgets.get(rot, budgets.get("*"))

    done = {(r["model"], r["train_rotate"]) for r in results}
    kept = [r for r in old.get("results", []) if (r["model"], r["train_rotate"]) not in done
            and r.get("budget_minutes", old.get("minutes")) == budget_of(r["train_rotate"])]
    scored = {r["model"] for r in test_rows}
    test_rows = [r for r in old.get("pcsym_test_rows", []) if r["model"] not in scored] + test_rows
    if args.test_data:
        return kept + results, [], test_rows
    return kept + results, [r for r in old.get("pcsym_runs", []) if r not in runs] + runs, test_rows


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--minutes", default="60",
                   help="training budget per model: N minutes for every rotation, or per training rotation, each N or "
                        "a pcsym model whose own training time it takes (e.g. z=o2,so3=so3)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="what the budget counts: wall time, or the process's CPU time (with --threads 1, the wall "
                        "time of a core of its own, so other jobs may share the machine without shortening it)")
    p.add_argument("--models", default="dgcnn,pointnet",
                   help="peers to train ('' for none: only (re)tabulate the --pcsym runs beside the earlier rows)")
    p.add_argument("--train-rotations", default="so3,z")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of the train split held out for validation")
    p.add_argument("--select", choices=["best", "last"], default="best",
                   help="keep the best-validation-mAcc epoch or the last one (like pcsym train --select)")
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--test-data", default=None,
                   help="a dataset whose test split scores every model (e.g. a test-dev folder), with --eval-seeds")
    p.add_argument("--eval-seeds", default="0,1,2", help="evaluation passes on --test-data (`pcsym evaluate --seed`)")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="keep each training's state here after every epoch: the same command goes on after an "
                        "interruption, and finished trainings are read back")
    p.add_argument("--stem", default="peers", help="result file names: STEM.json and STEM.md in --out")
    p.add_argument("--pcsym", default="",
                   help="pcsym runs (comma-separated) to put in the table: run folders (validation figures within the "
                        "budget) or, with --test-data, shipped names or checkpoints scored on its test split")
    p.add_argument("--beside", default="", help="what shared the machine while these models trained (recorded)")
    args = p.parse_args()
    try:
        args.eval_seeds = [int(x) for x in args.eval_seeds.split(",") if x.strip()] if args.test_data else None
        budgets = budget_minutes(args.minutes, args.clock)
    except Exception as exc:  # one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    C.set_threads(args.threads)
    C.quiet_warnings()
    from pcsym.data.datasets import load_dataset

    env = C.environment(args.threads, args.quick, args.idle)
    data = load_dataset(args.data, points=1024)
    args.test = None
    if args.test_data:
        args.test = load_dataset(args.test_data, points=1024)
        if [str(c) for c in args.test.class_names] != [str(c) for c in data.class_names]:
            print(f"error: {args.test_data} has other classes than {args.data}", file=sys.stderr)
            return 1
    results = []
    for rot in args.train_rotations.split(","):
        minutes = budgets.get(rot, budgets.get("*"))
        if minutes is None:
            print(f"error: --minutes gives no budget for training rotation {rot}", file=sys.stderr)
            return 1
        for name in filter(None, args.models.split(",")):
            run_dir = args.runs_dir / f"{name}-{rot}-s{args.seed}" if args.runs_dir else None
            r = train_peer(name, data, args, rot, lambda s: print(s, flush=True), minutes, run_dir)
            results.append({**r, "trained": env["date_utc"], "threads": args.threads, "beside": args.beside,
                            "load_avg_1min_at_start": env.get("load_avg_1min_at_start")})
    test_rows = []
    if args.test is not None and args.pcsym:
        test_rows = pcsym_test_rows([r for r in args.pcsym.split(",") if r], args.test, args.eval_seeds, args.clock)
    stem = f"{args.stem}_quick" if args.quick else args.stem
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / f".{stem}.lock").open("w") as lock:  # invocations running side by side merge one at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        return write_table(args, env, budgets, *merge_previous(out / f"{stem}.json", results, args, budgets, test_rows),
                           out)


def _pm(f: dict, what: str) -> str:
    return f"{f[what]:.4f}" + (f" ± {f[what + '_std']:.4f}" if f.get(what + "_std") is not None else "")


def write_table(args, env: dict, budgets: dict, results: list[dict], pcsym_runs: list[str], test_rows: list[dict],
                out: Path) -> int:
    budget_text = (f"{budgets['*']:g} min" if "*" in budgets else
                   ", ".join(f"{rot}-trained {m:g} min" for rot, m in budgets.items())) + f" of {args.clock} time"
    split = C.split_label(args.test_data) if args.test_data else "validation"
    if args.test_data:
        rows = [{"model": r["model"], "protocol": proto, "oa": _pm(f, "oa"), "macc": _pm(f, "macc"), "epochs": r["epochs"],
                 "train_minutes": r["train_minutes"], "wall_minutes": r.get("wall_minutes"), "params": r["params"],
                 "trained": r.get("trained", ""), "beside": r.get("beside", "")}
                for r in results for proto, f in r["test"].items()]
        rows += [{**r, "oa": _pm(r, "oa"), "macc": _pm(r, "macc"), "wall_minutes": None} for r in test_rows]
        from pcsym.data.splits import split_indices

        n_test = len(split_indices(args.test, "test", 0.0, 0))
        about = (f"{split.capitalize()} figures: the test split of {args.test_data} ({n_test} shapes), each cell the mean ± std over evaluation seeds {','.join(map(str, args.eval_seeds))} "
                 "(`pcsym evaluate --seed`: points, rotations). Trained on the train split of " + args.data +
                 f" less a {args.val_fraction:g} validation share (seed {args.seed}); the {args.select} epoch kept. "
                 "Peers: xyz and (estimated, where the data has none) normals in, the same augmentation as pcsym "
                 "(resampled points, jitter, scale, the protocol's rotation), AdamW with a cosine schedule in "
                 "training time, batch 16.")
        cols = [("model", "model"), ("protocol", "train/test rotation"), ("oa", f"{split} OA"),
                ("macc", f"{split} mAcc"), ("epochs", "epochs"), ("train_minutes", f"training min ({args.clock})"),
                ("wall_minutes", "wall min"), ("params", "params"), ("trained", "trained (UTC)"),
                ("beside", "sharing the machine")]
    else:
        rows = [{"model": r["model"], "protocol": proto, "macc": v["macc"], "oa": v["oa"],
                 "train_minutes": r["train_minutes"], "wall_minutes": r.get("wall_minutes"), "params": r["params"],
                 "trained": r.get("trained", ""),
                 "beside": r.get("beside", "")}
                for r in results for proto, v in r["protocols"].items()]
        rows += pcsym_rows(pcsym_runs, budgets.get("*", max(budgets.values())), args.clock)
        about = ("Validation split of the run (seed " + str(args.seed) + f", {args.val_fraction:g}), train/eval "
                 f"rotation per protocol; the {args.select}-validation-mAcc epoch of each model within the budget. "
                 "Validation, not the official test split.")
        cols = [("model", "model"), ("protocol", "train/eval rotation"), ("macc", "val mAcc"),
                ("oa", "val OA"), ("train_minutes", f"training min ({args.clock})"),
                ("wall_minutes", "wall min"), ("params", "params"),
                ("trained", "trained (UTC)"), ("beside", "sharing the machine")]
    md = "\n\n".join([
        f"# Peers on the same data, augmentation and training budget ({budget_text} per model)",
        C.env_markdown(env),
        about + " Rows of earlier invocations with the same settings and budget are kept (their date and what "
        "ran beside them are in the table).",
        C.table(rows, cols)])
    data_out = {"benchmark": "peers", "env": env, "data": args.data, "minutes": budgets.get("*"), "budgets": budgets,
                "seed": args.seed, "clock": args.clock, "test_data": args.test_data, "split_label": split,
                "val_fraction": args.val_fraction, "select": args.select, "eval_seeds": args.eval_seeds,
                "pcsym_runs": pcsym_runs, "pcsym_test_rows": test_rows, "results": results, "rows": rows}
    jp, mp = C.write_results(out, args.stem, data_out, md, args.quick)
    print(md)
    print(f"wrote {jp} and {mp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
