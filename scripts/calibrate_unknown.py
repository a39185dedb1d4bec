"""Calibrate a checkpoint's "unknown" detectors (pcsym.training.unknown) and store them with the model (in
the checkpoint, and in its numpy export when one sits beside it): the max-probability threshold and the
energy-score detector (or, with --score neighbour-similarity, the bank of training features + threshold).

Usage: python scripts/calibrate_unknown.py CKPT_OR_SHIPPED_NAME --data DATASET [--split val|test] [--keep 0.95]
                                           [--score energy|neighbour-similarity] [--check]
Runs trained with this pcsym store their detectors themselves (best.pt); this is for older checkpoints and
for the shipped models. ``--split val`` (default): the run's own validation shapes (split and seed from the
checkpoint); ``--split test``: the test split of DATASET (the shipped ModelNet40 models: ModelNet40
test-dev, where thresholds are chosen), drawn with the run's seed. The rotation is the run's evaluation one.
"""
import argparse
import json
import sys

import torch

from pcsym.config import TrainConfig
from pcsym.data.datasets import load_dataset
from pcsym.data.splits import run_split
from pcsym.data.transforms import eval_dataset
from pcsym.inference.export import export_model
from pcsym.inference.runtime import neighbour_similarity
from pcsym.models.checkpoint import load_model, resolve_checkpoint, train_config_of, update_checkpoint
from pcsym.training.evaluate import metrics_from_predictions, predict
from pcsym.training.unknown import calibrate, feature_bank, pooled_features, score_threshold, unknown_threshold


def check(path, model, data, tr, ds, probs, run, keep: float) -> None:
    """Calibrate on half of the validation shapes, report the share of the other half kept (both ways)."""
    bank = feature_bank(model, data, tr, run.eval_rotate, run.seed)
    scores = {"max-probability": probs.numpy().max(1),
              "neighbour-similarity": neighbour_similarity(pooled_features(model, ds), bank)}
    kept = {name: [round(float((s2 >= score_threshold(s1, keep)).mean()), 4)
                   for s1, s2 in ((s[0::2], s[1::2]), (s[1::2], s[0::2]))] for name, s in scores.items()}
    print(json.dumps({"checkpoint": str(path), "val_shapes": len(ds), "keep": keep, "kept_on_the_other_half": kept}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True)
    ap.add_argument("--keep", type=float, default=0.95)
    ap.add_argument("--split", choices=("val", "test"), default="val", help="the shapes whose share --keep is kept")
    ap.add_argument("--score", choices=("energy", "neighbour-similarity"), default="energy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="only report: calibrate on half of the validation shapes and "
                                                         "measure the share of the other half that is kept (nothing written)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    path = resolve_checkpoint(args.checkpoint)
    model, ckpt = load_model(path)
    run = train_config_of(ckpt) or TrainConfig()
    data = load_dataset(args.data, points=model.cfg.points)
    if args.score == "neighbour-similarity" and args.split == "test":
        ap.error("--score neighbour-similarity needs the run's training shapes: use --split val")
    tr = run_split(data, "train", run) if args.score == "neighbour-similarity" or args.check else None
    va = run_split(data, args.split, run)
    ds = eval_dataset(data, va, model.cfg.points, run.eval_rotate, run.seed)
    probs, labels = predict(model, ds)
    if args.check:
        check(path, model, data, tr, ds, probs, run, args.keep)
        return 0
    threshold = unknown_threshold(probs.numpy(), args.keep)
    detector = calibrate(model, data, tr, va, run.eval_rotate, run.seed, args.keep, args.score)
    m = metrics_from_predictions(labels.numpy(), probs.argmax(1).numpy(), model.cfg.class_names)
    update_checkpoint(path, model, ckpt, {"unknown_threshold": threshold, "unknown": detector})
    npz = path.with_suffix(".npz")
    if npz.exists():
        export_model(model, npz, "numpy", threshold, detector)
    print(json.dumps({"checkpoint": str(path), "split": args.split, "shapes": len(va), "rotate": run.eval_rotate,
                      "keep": args.keep, "unknown_threshold": round(threshold, 4), "score": detector["score"],
                      "threshold": round(detector["threshold"], 4), "oa": round(m["overall_accuracy"], 4),
                      "macc": round(m["mean_class_accuracy"], 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
