"""How often a model's "unknown" detector flags chimeras made from test shapes, the made-up outliers of
``pcsym train --outlier-exposure`` (pcsym.training.outliers): did outlier exposure teach what it showed?

Usage: python -m benchmarks.accuracy.chimeras --data DATASET [--seed 0] [--out PREFIX] MODEL ...
For each model: its test-split shapes (every shape when the dataset has none) at the model's evaluation
rotation (evaluation seed ``--seed``), in batches of 16 in an order shuffled by ``--seed``; one chimera per shape of a batch with a
shape of another class in it (40-60% of its points a ball of that shape, pcsym.training.outliers.chimeras,
seeded by ``--seed`` and the batch); then the share of chimeras whose energy falls below the model's stored
threshold, and the share of the intact shapes kept. Writes PREFIX.{json,md} (default
benchmarks/results/chimeras).
"""
import argparse
import json
import sys
import time

import numpy as np

from benchmarks.common import RESULTS, beside, out_prefix

DEFAULT_OUT = RESULTS / "chimeras"


def score(model_name: str, data_path: str, seed: int) -> dict:
    import torch

    from pcsym.data.datasets import load_dataset
    from pcsym.data.transforms import eval_dataset
    from pcsym.inference.runtime import energy
    from pcsym.models.checkpoint import load_model, train_config_of
    from pcsym.training.loader import make_loader
    from pcsym.training.outliers import chimeras, outlier_generator

    model, ckpt = load_model(model_name)
    model.eval()
    detector = ckpt.get("unknown") or {}
    if detector.get("score") != "energy":
        raise SystemExit(f"error: {model_name} has no energy-score detector (calibrate it first)")
    run = train_config_of(ckpt)
    data = load_dataset(data_path, points=model.cfg.points)
    split = np.asarray(data.split)
    idx = np.flatnonzero(split == "test") if (split == "test").any() else np.arange(len(split))
    ds = eval_dataset(data, idx, model.cfg.points, run.eval_rotate, run.seed, eval_seed=seed)
    intact, made = [], []
    with torch.no_grad():
        for b, (pos, nrm, y) in enumerate(make_loader(ds, 16, True, seed, 0, 0)):
            intact.append(energy(model(pos, nrm).numpy()))
            out = chimeras(pos, nrm, y, outlier_generator(seed, 0, b), share=1.0)
            if out is not None:
                made.append(energy(model(*out).numpy()))
    intact, made = np.concatenate(intact), np.concatenate(made)
    t = float(detector["threshold"])
    return {"model": model_name, "threshold": t, "shapes": int(len(intact)), "chimeras": int(len(made)),
            "kept": float((intact >= t).mean()), "chimeras_flagged": float((made < t).mean()),
            "median_energy_intact": float(np.median(intact)), "median_energy_chimeras": float(np.median(made))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    t0 = time.time()
    rows = []
    for m in args.models:
        rows.append(score(m, args.data, args.seed))
        r = rows[-1]
        print(f"[chimeras] {m}: keeps {100 * r['kept']:.1f}% of {r['shapes']} shapes, flags "
              f"{100 * r['chimeras_flagged']:.1f}% of {r['chimeras']} chimeras", flush=True)
    command = "python -m benchmarks.accuracy.chimeras " + " ".join(sys.argv[1:] if argv is None else argv)
    out = out_prefix(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    beside(out, ".json").write_text(json.dumps({"command": command, "data": args.data, "seed": args.seed,
                                                "wall_seconds": round(time.time() - t0, 1), "rows": rows}, indent=2) + "\n")
    lines = ["# Chimeras (made-up outliers of --outlier-exposure) flagged by each model's \"unknown\" detector", "",
             f"Command: `{command}` ({(time.time() - t0) / 60:.1f} min). Shapes: the test split of `{args.data}`,"
             f" evaluation seed {args.seed}; one chimera per shape (40-60% of its points from a shape of another class).", "",
             "| model | threshold | intact shapes kept (%) | chimeras flagged (%) | median energy: intact / chimeras |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['threshold']:.4f} | {100 * r['kept']:.1f} | {100 * r['chimeras_flagged']:.1f} "
                     f"| {r['median_energy_intact']:.2f} / {r['median_energy_chimeras']:.2f} |")
    beside(out, ".md").write_text("\n".join(lines) + "\n")
    print(f"[chimeras] wrote {beside(out, '.md')} and .json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
