"""Cut a model (one network or an ensemble) to some of its classes: the output layer's rows for them, so those
classes' logits are exactly the model's and each shape's answer is the likeliest of them. Calibrates the cut
model's energy "unknown" threshold on DATASET's test split (keep 95%, the run's evaluation rotation).

Usage: python scripts/keep_classes.py MODEL --classes-of DATASET --out NEW.pt
       e.g. the 40-class so3 cut to ModelNet10's classes: --classes-of ../shared/data/modelnet10_testdev_hdf5_1024
"""
import argparse
import json
import sys

import torch

from pcsym.config import TrainConfig
from pcsym.data.datasets import load_dataset
from pcsym.data.splits import run_split
from pcsym.models.checkpoint import load_model, save_checkpoint, train_config_of
from pcsym.models.ensemble import keep_classes
from pcsym.training.unknown import energy_detector


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--classes-of", required=True, help="a dataset whose classes the new model keeps; its test "
                                                        "split calibrates the 'unknown' threshold")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, ckpt = load_model(args.model)
    data = load_dataset(args.classes_of, points=model.cfg.points)
    cut = keep_classes(model, list(data.class_names))
    run = train_config_of(ckpt) or TrainConfig()
    detector = energy_detector(cut, data, run_split(data, "test", run), run.eval_rotate, run.seed)
    keep = {k: ckpt[k] for k in ("train_config", "members", "history") if k in ckpt}
    save_checkpoint(args.out, cut, cut.cfg, {**keep, "unknown": detector, "kept_classes_of": str(args.model),
                                              "unknown_calibration": {"data": args.classes_of, "split": "test"}})
    print(json.dumps({"out": args.out, "classes": len(cut.cfg.class_names), "threshold": round(detector["threshold"], 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
