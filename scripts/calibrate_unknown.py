"""Calibrate a checkpoint's "unknown" threshold on its own validation split and store it with the
model (in the checkpoint, and in its numpy export when one sits beside it).

Usage: python scripts/calibrate_unknown.py CKPT_OR_SHIPPED_NAME --data DATASET [--keep 0.95]
Runs trained with this pcsym store the threshold themselves (best.pt); this is for older checkpoints,
such as the shipped models. The validation split and rotation are the run's own (from the checkpoint).
"""
import argparse
import json

import torch

from pcsym.checkpoint import load_model, resolve_checkpoint, save_checkpoint, train_config_of
from pcsym.config import TrainConfig
from pcsym.data import load_dataset
from pcsym.splits import split_indices
from pcsym.evaluate import metrics_from_predictions, predict, unknown_threshold
from pcsym.export import export_model
from pcsym.transforms import eval_dataset

ap = argparse.ArgumentParser()
ap.add_argument("checkpoint")
ap.add_argument("--data", required=True)
ap.add_argument("--keep", type=float, default=0.95)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--check", action="store_true", help="only report: calibrate on half of the validation shapes and "
                                                     "measure the share of the other half that is kept (nothing written)")
args = ap.parse_args()
torch.set_num_threads(args.threads)

path = resolve_checkpoint(args.checkpoint)
model, ckpt = load_model(path)
run = train_config_of(ckpt) or TrainConfig()
data = load_dataset(args.data, points=model.cfg.points)
va = split_indices(data, "val", run.val_fraction, run.seed)
ds = eval_dataset(data, va, model.cfg.points, run.eval_rotate, run.seed)
probs, labels = predict(model, ds)
if args.check:
    p = probs.numpy()
    halves = (p[0::2], p[1::2])
    kept = [float((h2.max(1) >= unknown_threshold(h1, args.keep)).mean()) for h1, h2 in (halves, halves[::-1])]
    print(json.dumps({"checkpoint": str(path), "val_shapes": len(va), "keep": args.keep,
                      "kept_on_the_other_half": [round(k, 4) for k in kept]}))
    raise SystemExit(0)
threshold = unknown_threshold(probs.numpy(), args.keep)
m = metrics_from_predictions(labels.numpy(), probs.argmax(1).numpy(), model.cfg.class_names)
extra = {k: v for k, v in ckpt.items() if k not in ("format", "format_version", "pcsym_version", "model_config",
                                                     "state_dict")}
extra["unknown_threshold"] = threshold
save_checkpoint(path, model, model.cfg, extra)
npz = path.with_suffix(".npz")
if npz.exists():
    export_model(model, npz, "numpy", threshold)
print(json.dumps({"checkpoint": str(path), "val_shapes": len(va), "rotate": run.eval_rotate, "keep": args.keep,
                  "unknown_threshold": round(threshold, 4), "val_oa": round(m["overall_accuracy"], 4),
                  "val_macc": round(m["mean_class_accuracy"], 4)}))
