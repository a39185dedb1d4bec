""""unknown" measured: the share of in-class test shapes a model keeps and which real out-of-class meshes it
flags, with the detector stored in the model (energy score since 2026-12-06; see pcsym.training.unknown).

Usage: python -m benchmarks.accuracy.unknown_report --data DATASET --meshes FOLDER [--eval-seeds 0,1,2]
[--label test-dev] [--out PREFIX] MODEL ... (MODEL: so3, o2, a checkpoint). For each model: the share of
DATASET's test split (or of every shape, when it has none) whose score reaches the threshold, one pass per
evaluation seed (`pcsym evaluate --seed S`'s draws: rotation and downsampling order) at the model's own evaluation
rotation (mean ± std), and, for each mesh of FOLDER, whether
`pcsym classify MESH --model MODEL --seed S` answers "unknown", for each seed S. Writes PREFIX.{json,md}
(default benchmarks/results/unknown).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, beside, out_prefix

DEFAULT_OUT = RESULTS / "unknown"
MESH_SUFFIXES = (".obj", ".ply", ".stl", ".off")


def mesh_files(folder) -> list:
    """The mesh files of a folder (by suffix, sorted by name): the out-of-class shapes the "unknown" tools score."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in MESH_SUFFIXES)


def _seeds(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not vals or min(vals) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got '{text}'")
    return vals


def in_class_kept(clf, name: str, data_path: str, eval_seeds) -> dict:
    """Share of the in-class shapes whose "unknown" score reaches the threshold of ``clf`` (the loaded ``name``),
    per evaluation seed."""
    import numpy as np

    from pcsym.config import TrainConfig
    from pcsym.data.datasets import load_dataset
    from pcsym.data.splits import default_split, run_split
    from pcsym.data.transforms import eval_dataset
    from pcsym.inference.runtime import energy, neighbour_similarity
    from pcsym.models.checkpoint import load_model, train_config_of
    from pcsym.training.evaluate import predict, vote_base
    from pcsym.training.unknown import logits_of, pooled_features

    model, ckpt = load_model(name)
    run = train_config_of(ckpt) or TrainConfig()
    data = load_dataset(data_path, points=model.cfg.points)
    split = default_split(data) if (np.asarray(data.split) == "test").any() else "all"
    idx = run_split(data, split, run) if split != "all" else np.arange(len(data.labels))
    kept = []
    for s in eval_seeds:
        ds = eval_dataset(data, idx, model.cfg.points, run.eval_rotate, run.seed, s)
        if clf.unknown_score == "energy":  # the pass of `pcsym evaluate --seed s`: its draws and downsampling order
            scores = energy(logits_of(model, ds, vote=vote_base(s)))
        elif clf.unknown_score == "neighbour-similarity":
            scores = neighbour_similarity(pooled_features(model, ds), clf.unknown_bank, clf.unknown_k)
        else:
            scores = predict(model, ds, first_order=vote_base(s))[0].numpy().max(1)
        kept.append(float((scores >= clf.unknown_threshold).mean()))
    return {"score": clf.unknown_score, "threshold": clf.unknown_threshold, "split": split, "shapes": int(len(idx)),
            "rotate": run.eval_rotate, "kept_per_seed": kept, "kept_mean": statistics.fmean(kept),
            "kept_std": statistics.stdev(kept) if len(kept) > 1 else 0.0}


def meshes_flagged(clf, meshes, eval_seeds) -> dict:
    """classify's answer for each mesh and seed: unknown or not, its score and its top class."""
    from pcsym.inference.predict import classify_file

    out = {}
    for m in meshes:
        rows = [classify_file(clf, m, top_k=1, seed=s) for s in eval_seeds]
        out[m.name] = [{"seed": s, "unknown": r.get("unknown"), "score": r.get("score"),
                        "top": r["top"][0]["class"] if r.get("ok") else None} for s, r in zip(eval_seeds, rows)]
    return out


def main(argv=None) -> int:
    raw = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", required=True, help="in-class shapes (its test split, else all of them)")
    ap.add_argument("--meshes", required=True, help="a folder of out-of-class meshes")
    ap.add_argument("--eval-seeds", type=_seeds, default=[0, 1, 2])
    ap.add_argument("--label", default=None, help="how the tables name the split (default: test-dev for a "
                                                  "folder named *testdev*, else the split)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output prefix: writes PREFIX.{json,md}")
    args = ap.parse_args(raw)
    for path, flag in ((args.data, "--data"), (args.meshes, "--meshes")):
        if not Path(path).exists():
            ap.error(f"{flag}: no such file or folder: {path}")
    meshes = mesh_files(args.meshes)
    if not meshes:
        ap.error(f"--meshes: no {'/'.join(MESH_SUFFIXES)} files in {args.meshes}")
    import torch

    from pcsym.inference.predict import load_classifier

    torch.set_num_threads(args.threads)
    label = args.label or ("test-dev" if "testdev" in Path(args.data).name else None)
    rows, t0 = [], time.time()
    for name in args.models:
        t = time.time()
        clf = load_classifier(name)  # as classify loads it (a shipped name: its numpy export)
        kept = in_class_kept(clf, name, args.data, args.eval_seeds)
        flags = meshes_flagged(clf, meshes, args.eval_seeds)
        first = args.eval_seeds[0]
        flagged = sorted(m for m, r in flags.items() if r[0]["unknown"])
        rows.append({"model": name, **kept, "meshes": flags, "flagged_at_first_seed": flagged,
                     "flagged_count": len(flagged), "mesh_count": len(meshes),
                     "flagged_per_seed": [sum(bool(r[i]["unknown"]) for r in flags.values())
                                          for i in range(len(args.eval_seeds))],
                     "seconds": round(time.time() - t, 1)})
        print(f"[unknown] {name}: {kept['score']} keeps {100 * kept['kept_mean']:.1f}% of {kept['shapes']} "
              f"in-class shapes, flags {len(flagged)}/{len(meshes)} meshes (seed {first}): {', '.join(flagged)}", flush=True)
    command = "python -m benchmarks.accuracy.unknown_report " + " ".join(raw)
    rep = {"command": command, "data": args.data, "meshes": args.meshes, "eval_seeds": args.eval_seeds,
           "label": label, "wall_seconds": round(time.time() - t0, 1), "models": rows}
    out = out_prefix(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from pcsym.files import atomic_write_bytes

    atomic_write_bytes(beside(out, ".json"), (json.dumps(rep, indent=2) + "\n").encode())
    split = label or rows[0]["split"]
    L = ['# "unknown": in-class shapes kept, out-of-class meshes flagged', "",
         f"Command: `{command}` ({rep['wall_seconds'] / 60:.1f} min).", "",
         f"Kept: share of the {split} shapes of `{args.data}` whose score reaches the model's threshold, at the "
         f"model's evaluation rotation, one pass per evaluation seed {tuple(args.eval_seeds)} (mean ± std). Flagged: "
         f"meshes of `{args.meshes}` that `pcsym classify MESH --model MODEL` calls unknown (seed "
         f"{args.eval_seeds[0]}, the default), and per seed.", "",
         f"| model | score | threshold | {split} kept (%) | meshes flagged | flagged per seed | flagged meshes |",
         "|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['model']} | {r['score']} | {r['threshold']:.4f} | {100 * r['kept_mean']:.1f} ± "
                 f"{100 * r['kept_std']:.1f} | {r['flagged_count']}/{r['mesh_count']} | "
                 f"{', '.join(map(str, r['flagged_per_seed']))} | {', '.join(r['flagged_at_first_seed']) or '–'} |")
    L += ["", "Each mesh (seed " + str(args.eval_seeds[0]) + "): top class, score, unknown:", ""]
    for r in rows:
        L.append(f"- **{r['model']}**: " + "; ".join(
            f"{m} {v[0]['top']} {v[0]['score']:.3f}{' unknown' if v[0]['unknown'] else ''}"
            for m, v in r["meshes"].items() if v[0]["score"] is not None))
    atomic_write_bytes(beside(out, ".md"), ("\n".join(L) + "\n").encode())
    print(f"[unknown] wrote {beside(out, '.md')} and .json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
