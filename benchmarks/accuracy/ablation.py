"""Accuracy levers of the shipped so3 recipe, one at a time, on the run's own validation split (issue 14).

Every variant is the so3 recipe (``--group so3 --widths 48,96,192 --max-freq 2 --rotate so3
--eval-rotate so3``, 1024 points, batch 16, AdamW 2e-3 cosine) plus one change, trained for the same
number of epochs with each seed (the seed also draws the 80/20 split, so seeds differ in their
validation shapes too and comparisons are paired by seed). Reported per variant: validation mAcc
(the figure that tracked the official test split) and OA of the best-mAcc epoch, the last epoch's mAcc,
parameters and wall time per run. Runs live in ``--runs DIR/<variant>_s<seed>``; rerunning the script
skips finished runs and resumes interrupted ones (``pcsym train --resume``), so it can be stopped any
time. ``--jobs J`` runs J trainings at once with 2/J threads each. Selection is on validation only;
no test split is read.

    python -m benchmarks.accuracy.ablation --data ../shared/data/modelnet10_hdf5_1024 [--epochs 10] [--seeds 0,1]
        [--variants base,balance-loss,...] [--jobs 2] [--runs runs/ablation]
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common as C

RECIPE = ["--group", "so3", "--widths", "48,96,192", "--max-freq", "2", "--rotate", "so3", "--eval-rotate", "so3",
          "--points", "1024", "--batch-size", "16"]
VARIANTS = {
    "base": [],
    "balance-loss": ["--balance", "loss"],
    "balance-sampler": ["--balance", "sampler"],
    "ppf": ["--edge-features", "ppf"],
    "ppf+balance-loss": ["--edge-features", "ppf", "--balance", "loss"],
    "ppf+balance-sampler": ["--edge-features", "ppf", "--balance", "sampler"],
    "ppf+balance-sampler+random-fps": ["--edge-features", "ppf", "--balance", "sampler", "--sampling", "random-fps"],
    "sgd": ["--optimizer", "sgd", "--lr", "0.1", "--label-smoothing", "0.2"],
    "wider": ["--widths", "64,128,256"],
}


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.csv"
    if not path.exists():
        return []
    with path.open() as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def launch(data: str, variant: str, seed: int, epochs: int, threads: int, run: Path) -> subprocess.Popen:
    resume = (run / "last.pt").exists()
    cmd = [sys.executable, "-m", "pcsym", "-q", "train", "--data", data, *RECIPE, *VARIANTS[variant],
           "--epochs", str(epochs), "--seed", str(seed), "--threads", str(threads), "--out", str(run)]
    cmd += ["--resume"] if resume else ["--force"]  # no last.pt: start (again) from scratch
    run.mkdir(parents=True, exist_ok=True)
    (run / "ablation_cmd.txt").write_text(" ".join(cmd) + "\n")
    log = (run / "ablation.log").open("a")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def summarise(args, jobs: list[tuple[str, int]]) -> dict:
    rows = []
    for variant, seed in jobs:
        run = Path(args.runs) / f"{variant}_s{seed}"
        hist = metrics(run)
        if not hist:
            continue
        best = max(hist, key=lambda h: h["val_macc"])
        wall = json.loads((run / "ablation_wall.json").read_text()) if (run / "ablation_wall.json").exists() else {}
        rows.append({"variant": variant, "seed": seed, "epochs": len(hist), "best_epoch": int(best["epoch"]),
                     "val_macc": best["val_macc"], "val_oa": best["val_acc"], "last_macc": hist[-1]["val_macc"],
                     "train_acc": hist[-1]["train_acc"], "params": C.run_parameters(run),
                     "wall_min": wall.get("seconds", float("nan")) / 60,
                     "train_shapes_per_s": statistics.median(h["shapes_per_second"] for h in hist)})
    base = {r["seed"]: r for r in rows if r["variant"] == "base" and r["epochs"] == args.epochs}
    table = []
    for variant in dict.fromkeys(v for v, _ in jobs):
        mine = [r for r in rows if r["variant"] == variant and r["epochs"] == args.epochs]
        if not mine:
            continue
        deltas = [r["val_macc"] - base[r["seed"]]["val_macc"] for r in mine if r["seed"] in base]
        table.append({"variant": variant, "flags": " ".join(VARIANTS[variant]) or "(the so3 recipe)",
                      "seeds": len(mine),
                      "val_macc": statistics.mean(r["val_macc"] for r in mine) * 100,
                      "macc_range": (max(r["val_macc"] for r in mine) - min(r["val_macc"] for r in mine)) * 100,
                      "val_oa": statistics.mean(r["val_oa"] for r in mine) * 100,
                      "delta_macc": statistics.mean(deltas) * 100 if deltas and variant != "base" else None,
                      "train_acc": statistics.mean(r["train_acc"] for r in mine) * 100,
                      "params": mine[0]["params"], "wall_min": statistics.mean(r["wall_min"] for r in mine)})
    return {"runs": rows, "table": table}


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--runs", default="runs/ablation")
    p.add_argument("--summary-only", action="store_true", help="only tabulate the runs there are")
    args = p.parse_args()
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        print(f"unknown variants {unknown}: use {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    jobs = [(v, int(s)) for s in args.seeds.split(",") for v in args.variants.split(",")]
    env = C.environment(args.threads, args.quick, args.idle)
    threads = max(1, args.threads // args.jobs)
    pending = [j for j in jobs if len(metrics(Path(args.runs) / f"{j[0]}_s{j[1]}")) < args.epochs]
    running: dict = {}
    while (pending or running) and not args.summary_only:
        while pending and len(running) < args.jobs:
            variant, seed = pending.pop(0)
            run = Path(args.runs) / f"{variant}_s{seed}"
            wall_file = run / "ablation_wall.json"
            before = json.loads(wall_file.read_text())["seconds"] if wall_file.exists() else 0.0
            running[(variant, seed)] = (launch(args.data, variant, seed, args.epochs, threads, run), time.time(), before)
            print(f"started {variant} seed {seed}", flush=True)
        time.sleep(5)
        for key, (proc, t0, before) in list(running.items()):
            if proc.poll() is None:
                continue
            run = Path(args.runs) / f"{key[0]}_s{key[1]}"
            (run / "ablation_wall.json").write_text(json.dumps({"seconds": before + time.time() - t0}))
            print(f"finished {key[0]} seed {key[1]} (exit {proc.returncode})", flush=True)
            del running[key]
    res = summarise(args, jobs)
    cols = [("variant", "variant"), ("flags", "flags"), ("seeds", "seeds"), ("val_macc", "val mAcc %"),
            ("macc_range", "range over seeds"), ("delta_macc", "Δ mAcc vs base (paired)"), ("val_oa", "val OA %"),
            ("train_acc", "train acc %"), ("params", "params"), ("wall_min", "wall min/run")]
    md = "\n\n".join([
        f"# Accuracy ablation of the so3 recipe: {args.epochs} epochs, seeds {args.seeds}",
        C.env_markdown(env),
        f"{args.jobs} trainings at a time, {threads} thread(s) each (wall times include that sharing). Each "
        "figure: the best validation mAcc epoch of each run (SO(3)-rotated validation, the run's own split), "
        "averaged over seeds; Δ is paired by seed. Short budget: a lever that pays off only in long training "
        "does not show here. Command per run: `ablation_cmd.txt` in its run folder.",
        C.table(res["table"], cols),
        "Per run:\n\n" + C.table(res["runs"], [("variant", "variant"), ("seed", "seed"), ("epochs", "epochs"),
                                               ("best_epoch", "best epoch"), ("val_macc", "val mAcc"),
                                               ("val_oa", "val OA"), ("last_macc", "last mAcc"),
                                               ("train_acc", "train acc"), ("wall_min", "wall min"),
                                               ("train_shapes_per_s", "shapes/s")])])
    data = {"benchmark": "ablation", "env": env, "epochs": args.epochs, "seeds": args.seeds, **res}
    jp, mp = C.write_results(args.out, "ablation", data, md, args.quick)
    print(md)
    print(f"wrote {jp} and {mp}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())
