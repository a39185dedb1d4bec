"""Rotation protocols for trained models: accuracy with test-time rotations none / z / SO(3)
(train/test protocols z/z, z/SO3, SO3/SO3), on the official test split when the dataset has one,
else on the validation split each run held out (``--split`` chooses, like ``pcsym evaluate``).

Usage: python -m benchmarks.accuracy.protocols --data DATASET [--split val|test] [--votes N] MODEL[=LABEL] ...
(MODEL: so3, o2, a run dir). Writes benchmarks/results/protocols.{json,md}; equivalent to
`pcsym evaluate MODEL --data DATASET --split S --rotate R [--votes N]` for each R.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS
from pcsym.models.checkpoint import load_model, train_config_of
from pcsym.config import TrainConfig
from pcsym.data.datasets import load_dataset
from pcsym.errors import PcsymError
from pcsym.data.splits import default_split, run_split
from pcsym.training.evaluate import evaluate_model
from pcsym.data.transforms import eval_dataset

DEFAULT_OUT = RESULTS / "protocols"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--split", choices=("val", "test"), default=None,
                    help="default: test when the dataset has an official test split, else each run's own validation split")
    ap.add_argument("--votes", type=int, default=1, help="also report z- and SO(3)-rotated accuracy with N-vote test-time voting")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("models", nargs="+")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    for spec in args.models:
        path, _, label = spec.partition("=")
        try:  # a missing model or dataset, or --split test of a dataset without one: one line, exit 1
            model, ckpt = load_model(path)
            data = load_dataset(args.data, points=model.cfg.points)
            run = train_config_of(ckpt) or TrainConfig()
            split = args.split or default_split(data)
            va = run_split(data, split, run)  # the official test split, or the shapes the run held out
        except PcsymError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        train_rot = (ckpt.get("train_config") or {}).get("rotate", "?")
        hist = ckpt.get("history") or []
        row = {"model": label or path, "group": model.cfg.group, "kernel": model.cfg.kernel, "train_rotate": train_rot,
               "epochs": len(hist), "train_minutes": round(sum(h["epoch_seconds"] for h in hist) / 60, 1),
               "params": sum(p.numel() for p in model.parameters())}
        for rot in ("none", "z", "so3"):
            t = time.time()
            ds = eval_dataset(data, va, model.cfg.points, rot, run.seed)
            m = evaluate_model(model, ds)
            row[f"oa_{rot}"], row[f"macc_{rot}"] = m["overall_accuracy"], m["mean_class_accuracy"]
            print(f"{row['model']:>10} rotate={rot:<4} OA {m['overall_accuracy']:.4f} mAcc {m['mean_class_accuracy']:.4f} "
                  f"({time.time() - t:.1f}s)", flush=True)
            if args.votes > 1 and rot != "none":  # `pcsym evaluate MODEL --rotate R --votes N`
                t = time.time()
                m = evaluate_model(model, ds, votes=args.votes)
                row[f"oa_{rot}_votes"], row[f"macc_{rot}_votes"] = m["overall_accuracy"], m["mean_class_accuracy"]
                print(f"{row['model']:>10} rotate={rot:<4} votes={args.votes} OA {m['overall_accuracy']:.4f} "
                      f"mAcc {m['mean_class_accuracy']:.4f} ({time.time() - t:.1f}s)", flush=True)
        rows.append(row)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"data": args.data, "split": split, "n_shapes": int(len(va)), "votes": args.votes,
                                                    "rows": rows}, indent=2))
    cols = [("none", "no rotation"), ("z", "z-rotated"), ("so3", "SO(3)-rotated")]
    if args.votes > 1:
        cols += [("z_votes", f"z-rotated, {args.votes} votes"), ("so3_votes", f"SO(3)-rotated, {args.votes} votes")]
    what = (f"the official test split ({len(va)} shapes of {args.data})" if split == "test" else
            f"the validation split ({len(va)} held-out shapes of {args.data})")
    about = ("Official-test figures" if split == "test" else
             "Validation figures (the run's own held-out split, never the official test split)")
    lines = [f"# Rotation protocols on {what}", "",
             f"{about}. Each cell: OA / mAcc (overall / mean class accuracy); on validation, mAcc is the figure "
             "that tracked the balanced test split.", "",
             "| model | group | trained with | epoch of best ckpt | train min to it (sum of epoch times) | params | "
             + " | ".join(f"{label}" for _, label in cols) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r['oa_' + key]:.4f} / {r['macc_' + key]:.4f}" for key, _ in cols]
        lines.append(f"| {r['model']} | {r['group']} | {r['train_rotate']} | {r['epochs']} | {r['train_minutes']} | "
                     f"{r['params']:,} | " + " | ".join(cells) + " |")
    votes = (f" --split {args.split}" if args.split else "") + (f" --votes {args.votes}" if args.votes > 1 else "")
    dest = "" if out == DEFAULT_OUT else f" --out {args.out}"  # re-running the line rewrites this file, not another
    lines += ["", f"Command: `python -m benchmarks.accuracy.protocols --data {args.data}{votes}{dest} " + " ".join(args.models) + "`"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
