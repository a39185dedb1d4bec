"""Rotation protocols for trained models: accuracy with test-time rotations none / z / SO(3)
(train/test protocols z/z, z/SO3, SO3/SO3), on the official test split when the dataset has one,
else on the validation split each run held out (``--split`` chooses, like ``pcsym evaluate``).

Usage: python -m benchmarks.accuracy.protocols --data DATASET [--split val|test] [--votes N] [--eval-seeds 0,1,2]
[--rotations none,z,so3] MODEL[=LABEL] ... (MODEL: so3, o2, a run dir). Writes benchmarks/results/protocols.{json,md}; equivalent to
`pcsym evaluate MODEL --data DATASET --split S --rotate R [--votes N] [--seed K]` for each R (and each K of
--eval-seeds, whose figures are reported as mean ± std over the evaluation seeds).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, beside, out_prefix, split_label
from pcsym.models.checkpoint import load_model, train_config_of
from pcsym.config import TrainConfig
from pcsym.data.datasets import load_dataset
from pcsym.errors import PcsymError
from pcsym.data.splits import default_split, run_split
from pcsym.training.evaluate import evaluate_model, restrict_to_classes, vote_base
from pcsym.data.transforms import eval_dataset

DEFAULT_OUT = RESULTS / "protocols"
ROTATIONS = ("none", "z", "so3")


def score(model, data, va, run, rot, votes=1, eval_seeds=None):
    """OA and mAcc (means over the evaluation seeds, with their stds and the per-seed figures)."""
    figures = []
    for s in eval_seeds or [None]:
        ds = eval_dataset(data, va, model.cfg.points, rot, run.seed, s)
        m = evaluate_model(model, ds, votes=votes, first_order=vote_base(s))
        figures.append((m["overall_accuracy"], m["mean_class_accuracy"]))
    oa, macc = [f[0] for f in figures], [f[1] for f in figures]
    out = {"oa": statistics.fmean(oa), "macc": statistics.fmean(macc)}
    if eval_seeds is not None:
        out.update(oa_std=statistics.pstdev(oa), macc_std=statistics.pstdev(macc), oa_seeds=oa, macc_seeds=macc)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--split", choices=("val", "test"), default=None,
                    help="default: test when the dataset has an official test split, else each run's own validation split")
    ap.add_argument("--votes", type=int, default=1, help="also report z- and SO(3)-rotated accuracy with N-vote test-time voting")
    ap.add_argument("--eval-seeds", default=None,
                    help="comma-separated evaluation seeds (`pcsym evaluate --seed`): each figure is the mean ± std over "
                         "these draws of the points, rotations and downsamplings (default: the one fixed pass)")
    ap.add_argument("--rotations", default=",".join(ROTATIONS),
                    help="comma-separated test-time rotations to score, of none, z, so3 (default: all three; a model "
                         "invariant to SO(3) scores alike under each, so `--rotations so3` gives its figures in a third "
                         "of the time)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("models", nargs="+")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        eval_seeds = None if args.eval_seeds is None else [int(x) for x in args.eval_seeds.split(",") if x.strip()]
        if eval_seeds is not None and (not eval_seeds or min(eval_seeds) < 0):
            raise ValueError
    except ValueError:
        print(f"error: --eval-seeds must be comma-separated integers 0 or more, got '{args.eval_seeds}'", file=sys.stderr)
        return 1
    rotations = [r.strip() for r in args.rotations.split(",") if r.strip()]
    if not rotations or any(r not in ROTATIONS for r in rotations) or len(set(rotations)) != len(rotations):
        print(f"error: --rotations must be distinct names among none, z, so3, comma-separated, got '{args.rotations}'",
              file=sys.stderr)
        return 1
    rotations = [r for r in ROTATIONS if r in rotations]  # the tables' column order

    rows = []
    for spec in args.models:
        path, _, label = spec.partition("=")
        try:  # a missing model or dataset, or --split test of a dataset without one: one line, exit 1
            model, ckpt = load_model(path)
            data = load_dataset(args.data, points=model.cfg.points)
            model, model_classes = restrict_to_classes(model, data.class_names, args.data)  # e.g. 40 classes on ModelNet10
            run = train_config_of(ckpt) or TrainConfig()
            split = args.split or default_split(data)
            va = run_split(data, split, run)  # the official test split, or the shapes the run held out
        except PcsymError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        train_rot = (ckpt.get("train_config") or {}).get("rotate", "?")
        hist = ckpt.get("history") or []
        epochs = len(hist)
        if ckpt.get("ensemble_members"):  # `pcsym ensemble`: each member's epochs (its history holds them all)
            tags = [h.get("member") for h in hist]
            epochs = " + ".join(str(tags.count(i)) for i in range(int(ckpt["ensemble_members"])))
        row = {"model": label or path, "group": model.cfg.group, "kernel": model.cfg.kernel, "train_rotate": train_rot,
               "epochs": epochs, "train_minutes": round(sum(h["epoch_seconds"] for h in hist) / 60, 1),
               "params": sum(p.numel() for p in model.parameters())}
        if model_classes:
            row["model_classes"] = model_classes
        for rot in rotations:
            # votes: only for rotated protocols, `pcsym evaluate MODEL --rotate R --votes N`
            for key, votes in [(rot, 1)] + ([(f"{rot}_votes", args.votes)] if args.votes > 1 and rot != "none" else []):
                t = time.time()
                f = score(model, data, va, run, rot, votes, eval_seeds)
                row[f"oa_{key}"], row[f"macc_{key}"] = f["oa"], f["macc"]
                for what in ("oa", "macc"):  # oa_z_std, oa_z_seeds, ...
                    for extra in ("std", "seeds"):
                        if f"{what}_{extra}" in f:
                            row[f"{what}_{key}_{extra}"] = f[f"{what}_{extra}"]
                spread = {w: f" ± {f[w + '_std']:.4f}" if w + "_std" in f else "" for w in ("oa", "macc")}
                print(f"{row['model']:>10} rotate={rot:<4}" + (f" votes={votes}" if votes > 1 else "") +
                      f" OA {f['oa']:.4f}{spread['oa']} mAcc {f['macc']:.4f}{spread['macc']} ({time.time() - t:.1f}s)",
                      flush=True)
        rows.append(row)

    out = out_prefix(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    label = split_label(args.data) if split == "test" else "validation"
    beside(out, ".json").write_text(json.dumps({"data": args.data, "split": split, "n_shapes": int(len(va)), "votes": args.votes,
                                                    "eval_seeds": eval_seeds,
                                                    "split_label": label,
                                                    "rows": rows}, indent=2))
    names = {"none": "no rotation", "z": "z-rotated", "so3": "SO(3)-rotated"}
    cols = [(r, names[r]) for r in rotations]
    if args.votes > 1:
        cols += [(f"{r}_votes", f"{names[r]}, {args.votes} votes") for r in rotations if r != "none"]
    what = (f"the {'test-dev half of the official test' if label == 'test-dev' else 'official test'} split "
            f"({len(va)} shapes of {args.data})" if split == "test" else
            f"the validation split ({len(va)} held-out shapes of {args.data})")
    about = ("Validation figures (the run's own held-out split, never the official test split)" if split != "test" else
             "Test-dev figures (the development half of the official test split, where choices are made)"
             if label == "test-dev" else "Official-test figures")
    lines = [f"# Rotation protocols on {what}", "",
             f"{about}. Each cell: OA / mAcc (overall / mean class accuracy)"
             + (f", mean ± std over evaluation seeds {','.join(map(str, eval_seeds))} (`pcsym evaluate --seed`)"
                if eval_seeds is not None else "")
             + "; on validation, mAcc is the figure that tracked the balanced test split.", "",
             "| model | group | trained with | epoch of best ckpt | train min to it (sum of epoch times) | params | "
             + " | ".join(f"{label}" for _, label in cols) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(cols)]
    for r in rows:
        def cell(key, what):
            return f"{r[f'{what}_{key}']:.4f}" + (f" ± {r[f'{what}_{key}_std']:.4f}" if f"{what}_{key}_std" in r else "")

        cells = [f"{cell(key, 'oa')} / {cell(key, 'macc')}" for key, _ in cols]
        lines.append(f"| {r['model']}" + (f" ({r['model_classes']} classes, scored on the data's)" if r.get("model_classes") else "")
                     + f" | {r['group']} | {r['train_rotate']} | {r['epochs']} | {r['train_minutes']} | "
                     f"{r['params']:,} | " + " | ".join(cells) + " |")
    votes = (f" --split {args.split}" if args.split else "") + (f" --votes {args.votes}" if args.votes > 1 else "") + \
        (f" --eval-seeds {','.join(map(str, eval_seeds))}" if eval_seeds is not None else "") + \
        (f" --rotations {','.join(rotations)}" if rotations != list(ROTATIONS) else "")
    dest = "" if out == DEFAULT_OUT else f" --out {args.out}"  # re-running the line rewrites this file, not another
    lines += ["", f"Command: `python -m benchmarks.accuracy.protocols --data {args.data}{votes}{dest} "
              + " ".join(args.models) + "`"]
    beside(out, ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
