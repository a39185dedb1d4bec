"""How much of a validation figure comes from near-duplicates of training shapes?

ModelNet's train split holds many near-copies of one model (chairs, monitors, sofas from the same
source), so a validation split cut from it contains shapes that have a near twin among the training
shapes, which the official test split has fewer of. For every validation shape this script finds the
Chamfer distance to its nearest training shape of the same class (upright, as stored; ``--points``
points of each cloud), splits the validation shapes into quartiles of that distance, and scores each
model on each quartile (single pass or ``--votes N``, the model's own protocol rotation, the run's own split).

Usage: python -m benchmarks.accuracy.neardup --data DATASET MODEL[+MODEL...]:ROTATE[=LABEL] ...   e.g.  so3:so3 o2:z
``a.pt+b.pt:so3`` scores an ensemble: the members' class probabilities averaged, same clouds and rotations.
All models must share one split (seed and validation fraction) and one cloud size. Writes benchmarks/results/neardup.{md,json}
(or --out). Validation figures only; nothing here touches a test split.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, beside, out_prefix
from pcsym.models.checkpoint import load_model, train_config_of
from pcsym.data.datasets import load_dataset
from pcsym.training.evaluate import metrics_from_predictions, predict
from pcsym.data.splits import split_indices
from pcsym.data.transforms import eval_dataset

DEFAULT_OUT = RESULTS / "neardup"


def nearest_train_distance(data, va, tr, points: int) -> np.ndarray:
    """Symmetric Chamfer distance (mean squared nearest-point distance, both ways) from each validation
    shape to its closest training shape of the same class."""
    clouds = torch.as_tensor(np.asarray(data.points)[:, :points], dtype=torch.float32)
    labels = np.asarray(data.labels)
    out = np.empty(len(va))
    for c in np.unique(labels[va]):
        ti = tr[labels[tr] == c]
        keys = clouds[ti]
        for row in np.flatnonzero(labels[va] == c):
            q = clouds[va[row]].expand(len(ti), -1, -1)
            d = torch.cdist(q, keys).pow(2)
            out[row] = float((d.min(2).values.mean(1) + d.min(1).values.mean(1)).min())
    return out


def accuracy(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(OA, mAcc over the classes present in ``y``), as ``pcsym evaluate`` computes them."""
    classes = [str(c) for c in range(int(max(y.max(initial=0), pred.max(initial=0))) + 1)]
    m = metrics_from_predictions(y, pred, classes)
    return m["overall_accuracy"], m["mean_class_accuracy"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--points", type=int, default=256, help="points per cloud in the Chamfer distance")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--votes", type=int, default=1, help="predictions averaged over N augmented copies")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("models", nargs="+")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    models, first = [], None  # every model loaded and checked first: a mismatch stops the script before minutes of work
    for spec in args.models:
        name, _, label = spec.partition("=")
        paths, _, rotate = name.partition(":")
        members = []  # a+b: an ensemble, its members' class probabilities averaged
        for path in paths.split("+"):
            model, ckpt = load_model(path)
            run = train_config_of(ckpt)
            key = (run.seed, run.val_fraction, model.cfg.points)  # the clouds are loaded once, at one size
            first = first or key
            if key != first:
                raise SystemExit(f"{path}: split seed, fraction and points per cloud {key} differ from the first "
                                 f"model's {first}: score them in separate runs")
            members.append(model)
        models.append((members, label or name, rotate or "none"))

    (seed, fraction, n_points), rows = first, []
    data = load_dataset(args.data, points=n_points)
    va = split_indices(data, "val", fraction, seed)
    tr = split_indices(data, "train", fraction, seed)  # the whole training split, also for a --train-fraction run
    dist = nearest_train_distance(data, va, tr, args.points)
    edges = np.quantile(dist, [0.25, 0.5, 0.75])
    quart = np.searchsorted(edges, dist, side="right")  # 0 = nearest quarter ... 3 = farthest
    for members, label, rotate in models:
        ds = eval_dataset(data, va, n_points, rotate, seed)  # every member sees the same rotated clouds
        probs, y = zip(*(predict(m, ds, votes=args.votes) for m in members))
        probs, y = sum(probs) / len(members), y[0]
        pred, y = probs.argmax(1).numpy(), y.numpy()
        row = {"model": label, "rotate": rotate, "all": accuracy(pred, y)}
        for q in range(4):
            row[f"q{q + 1}"] = accuracy(pred[quart == q], y[quart == q])
        row["far_half"] = accuracy(pred[quart >= 2], y[quart >= 2])
        rows.append(row)
        print(row, flush=True)

    out = out_prefix(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    edges = [float(e) for e in edges]
    names = [str(n) for n in data.class_names]
    labels_va = np.asarray(data.labels)[va]
    mix = {names[c]: [int(((quart == q) & (labels_va == c)).sum()) for q in range(4)] for c in np.unique(labels_va)}
    beside(out, ".json").write_text(json.dumps({"data": args.data, "points": args.points, "seed": seed,
                                                    "val_fraction": fraction, "votes": args.votes,
                                                    "n_val": int(len(dist)),
                                                    "quartile_edges": edges, "class_counts_by_quarter": mix,
                                                    "rows": rows}, indent=2))
    cols = [("all", "all"), ("q1", "nearest quarter"), ("q2", "2nd"), ("q3", "3rd"), ("q4", "farthest quarter"),
            ("far_half", "farther half")]
    lines = [f"# Validation accuracy by distance to the nearest training shape ({len(dist)} held-out shapes of "
             f"{args.data}, split seed {seed})", "",
             f"Chamfer distance on {args.points} points per cloud, same class, upright; quartile edges "
             + ", ".join(f"{e:.2e}" for e in edges) + ". Each cell: OA / mAcc, "
             + ("single pass." if args.votes == 1 else f"{args.votes} votes."), "",
             "| model | rotation | " + " | ".join(c for _, c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['rotate']} | "
                     + " | ".join(f"{100 * r[k][0]:.1f} / {100 * r[k][1]:.1f}" for k, _ in cols) + " |")
    lines += ["", "Shapes per class in each quarter (nearest to farthest): "
              + "; ".join(f"{k} {'/'.join(map(str, v))}" for k, v in mix.items()) + "."]
    dest = "" if out == DEFAULT_OUT else f" --out {args.out}"
    dest += "" if args.votes == 1 else f" --votes {args.votes}"
    dest += "" if args.threads == 2 else f" --threads {args.threads}"
    lines += ["", f"Command: `python -m benchmarks.accuracy.neardup --data {args.data} --points {args.points}{dest} "
              + " ".join(args.models) + "`"]
    beside(out, ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
