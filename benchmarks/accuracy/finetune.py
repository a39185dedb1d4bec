"""Fine-tuning a shipped model vs training from scratch on a small labelled set, same steps.

The set: N shapes per class of a few ModelNet10 classes, all taken from the *validation* part of the
shipped so3 model's own split (seed 0, 20%), so the shipped model never trained on any of them; the
remaining validation shapes of those classes are the test split. Both runs use the same recipe and
number of steps, SO(3)-rotated training and evaluation. Usage:

    python -m benchmarks.accuracy.finetune --data ../shared/data/modelnet10_hdf5_1024 [--per-class 10] [--epochs 15]
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS
from pcsym.data.datasets import load_dataset
from pcsym.data.splits import split_indices


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--classes", default="bathtub,desk,dresser,night_stand")
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="runs/finetune")
    ap.add_argument("--out", default=str(RESULTS / "finetune.json"))
    args = ap.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.data, points=1024)
    names = list(map(str, data.class_names))
    val = split_indices(data, "val", 0.2, 0)  # the shipped models' held-out shapes
    rng = np.random.default_rng(0)
    keep, split, labels = [], [], []
    for new, cls in enumerate(args.classes.split(",")):
        members = rng.permutation(val[data.labels[val] == names.index(cls)])
        for j, i in enumerate(members):
            keep.append(i)
            split.append("train" if j < args.per_class else "test")
            labels.append(new)
    keep = np.array(keep)
    subset = work / "subset.npz"
    np.savez(subset, points=data.points[keep], normals=data.normals[keep], labels=np.array(labels, np.int64),
             class_names=np.array(args.classes.split(",")), split=np.array(split, dtype="<U5"),
             source_format=np.array("h5"), up_axis=np.array(data.up_axis), points_per_shape=np.array(data.points.shape[1]),
             cache_version=np.array(1), fingerprint=np.array(""))
    common = ["--data", str(subset), "--epochs", str(args.epochs), "--batch-size", "8", "--rotate", "so3",
              "--eval-rotate", "so3", "--val-fraction", "0.2", "--threads", str(args.threads), "--force"]
    runs = {"fine-tune from so3": ("finetune", ["--init", "so3"]),
            "fine-tune from so3, frozen trunk": ("frozen", ["--init", "so3", "--freeze-trunk"]),
            "from scratch (same so3 model)": ("scratch", ["--group", "so3", "--widths", "48,96,192", "--max-freq", "2"])}
    rows = []
    for label, (folder, extra) in runs.items():
        out = work / folder
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "pcsym", "-q", "train", "--out", str(out), *common, *extra], check=True)
        minutes = (time.time() - t0) / 60
        ev = subprocess.run([sys.executable, "-m", "pcsym", "evaluate", str(out / "last.pt"), "--data", str(subset),
                             "--rotate", "so3", "--json"], check=True, capture_output=True, text=True)
        m = json.loads(ev.stdout)
        rows.append({"run": label, "test_oa": round(m["overall_accuracy"], 4), "test_macc": round(m["mean_class_accuracy"], 4),
                     "n_test": m["n"], "wall_minutes": round(minutes, 1)})
        print(json.dumps(rows[-1]), flush=True)
    result = {"command": " ".join(["python -m benchmarks.accuracy.finetune"] + (sys.argv[1:] if argv is None else list(argv))), "classes": args.classes,
              "train_shapes": int(sum(s == "train" for s in split)), "test_shapes": int(sum(s == "test" for s in split)),
              "epochs": args.epochs, "note": "measured on a 2-core machine shared with other jobs (wall times are not comparable)",
              "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
