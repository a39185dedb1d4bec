#!/usr/bin/env python
"""Group comparison, implicit vs basis kernels (Zhdanov, Hoffmann & Cesa 2023, Figure 3).

For every symmetry group, trains an implicit-kernel model and escnn's steerable-basis model
(``kernel="implicit"`` / ``"basis"``) with a matched parameter count (the basis model's widths are
scaled by a searched multiplier until ``count_parameters`` is within ±10% of the implicit model's;
if that cannot be reached, the implicit model's widths are searched instead). Both are trained with
the same budget on the same data split (z-rotation augmentation) over several seeds and evaluated
on z-rotated validation clouds. Writes a markdown table, a JSON file and a bar chart:

    python -m benchmarks.accuracy.groups_report                       # reduced budget on the shipped subset
    python -m benchmarks.accuracy.groups_report --quick --out /tmp/r  # seconds-long smoke run

The reported accuracy is the validation accuracy after the *last* epoch (no selection on the
validation set); the best-epoch accuracy is kept in the JSON for reference.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing as mp
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.common import beside, out_prefix, split_label

ROOT = Path(__file__).resolve().parents[2]

GROUPS = ("so2", "o2", "so3", "o3", "m", "inv", "f", "trivial")
KERNELS = ("implicit", "basis")
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "groups_report"
TOLERANCE = 0.10  # parameter counts must match within ±10%


# ----------------------------------------------------------------------------- configs


def _ints(text: str, minimum: int = 1) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not vals or min(vals) < minimum:
        kind = "positive integers" if minimum == 1 else f"integers >= {minimum}"
        raise argparse.ArgumentTypeError(f"expected {kind}, got '{text}'")
    return vals


def _ints0(text: str) -> tuple[int, ...]:
    """Comma-separated non-negative integers (evaluation seeds)."""
    return _ints(text, 0)


def _groups(text: str) -> tuple[str, ...]:
    from pcsym.models.groups import get_group

    names = tuple(g.strip() for g in text.split(",") if g.strip())
    if not names:
        raise argparse.ArgumentTypeError("no groups given")
    try:
        return tuple(get_group(g).name for g in names)
    except Exception as exc:  # PcsymError with a suggestion
        raise argparse.ArgumentTypeError(str(exc)) from None


def base_model_config(args, group: str, kernel: str, widths=None):
    from pcsym.config import ModelConfig

    return ModelConfig(group=group, kernel=kernel, points=args.points, k=args.k,
                       widths=tuple(widths or args.widths), strides=tuple(args.strides),
                       invariant_dims=args.invariant_dims, head_dims=args.head_dims,
                       class_names=[f"c{i}" for i in range(args.num_classes)])


def scaled(widths, mult: float) -> tuple[int, ...]:
    return tuple(max(1, int(round(w * mult))) for w in widths)


def count_for(cfg) -> int:
    from pcsym.models.classifier import build_model, count_parameters

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return count_parameters(build_model(cfg))


def search_widths(cfg, target: int, lo: float = 0.05, hi: float = 4.0, iters: int = 18):
    """Width multiplier for ``cfg`` whose parameter count is closest to ``target`` (bisection on a
    log scale; counts are monotone in the widths). Returns (multiplier, widths, count). ``hi`` caps the
    probe: building a model 12x as wide (the old cap) took several GB for the 3D groups."""
    cache: dict[tuple[int, ...], int] = {}

    def count(mult):
        w = scaled(cfg.widths, mult)
        if w not in cache:
            cache[w] = count_for(replace(cfg, widths=w, class_names=list(cfg.class_names)))
        return w, cache[w]

    best = None

    def consider(mult):
        nonlocal best
        w, c = count(mult)
        if best is None or abs(c / target - 1) < abs(best[2] / target - 1):
            best = (mult, w, c)
        return c

    if consider(hi) < target:
        return best
    if consider(lo) > target:
        return best
    consider(1.0)
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        if consider(mid) < target:
            lo = mid
        else:
            hi = mid
        if abs(best[2] / target - 1) < 0.005 or scaled(cfg.widths, lo) == scaled(cfg.widths, hi):
            break
    return best


def match_group(args, group: str) -> dict:
    """Parameter-matched (implicit, basis) configs for one group."""
    info: dict = {"group": group}
    try:
        imp = base_model_config(args, group, "implicit")
        bas = base_model_config(args, group, "basis")
        n_imp, n_bas0 = count_for(imp), count_for(bas)
        info["basis_at_reference_widths"] = n_bas0
        mult, w, n_bas = search_widths(bas, n_imp)
        searched = "basis"
        if abs(n_bas / n_imp - 1) > TOLERANCE:  # fall back: scale the implicit model to the basis one
            mult_i, w_i, n_imp_i = search_widths(imp, n_bas0)
            if abs(n_bas0 / n_imp_i - 1) < abs(n_bas / n_imp - 1):
                searched, mult, n_imp, n_bas = "implicit", mult_i, n_imp_i, n_bas0
                imp, w = replace(imp, widths=w_i, class_names=list(imp.class_names)), tuple(bas.widths)
        bas = replace(bas, widths=w, class_names=list(bas.class_names))
        info.update(implicit_widths=list(imp.widths), basis_widths=list(bas.widths), implicit_params=n_imp,
                    basis_params=n_bas, ratio=n_bas / n_imp, searched=searched, multiplier=mult,
                    matched=abs(n_bas / n_imp - 1) <= TOLERANCE)
    except Exception as exc:
        info.update(error=f"{type(exc).__name__}: {exc}".strip()[:500], matched=False)
    return info


# ----------------------------------------------------------------------------- one training run


def run_name(group: str, kernel: str, seed: int) -> str:
    return f"{group}-{kernel}-s{seed}"


def run_one(job: dict) -> dict:
    """Train + evaluate one (group, kernel, seed); runs in a worker process.

    With ``job["runs_dir"]`` the run lives in ``RUNS_DIR/<group>-<kernel>-s<seed>/``: a finished run
    (its ``result.json``) is read back, an interrupted one goes on from its ``last.pt`` (``--resume``),
    so a study continues where it stopped. With ``job["test_data"]`` the last epoch's model is scored
    on that dataset's shapes, z-rotated, once per evaluation seed (``evaluate --seed``)."""
    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(job["threads"])
    from pcsym.config import ModelConfig
    from pcsym.config import TrainConfig
    from pcsym.files import atomic_write_bytes
    from pcsym.training.train import train

    res = {k: job[k] for k in ("group", "kernel", "seed")}
    run_dir = Path(job["runs_dir"]) / run_name(job["group"], job["kernel"], job["seed"]) if job.get("runs_dir") else None
    if run_dir is not None and (run_dir / "result.json").exists():
        done = json.loads((run_dir / "result.json").read_text())
        if done.get("job") == _job_key(job):
            return done["result"]
    if job.get("report_only"):
        return {**res, "ok": False, "error": "not finished (--report-only)", "wall_seconds": 0.0}
    t0 = time.time()
    try:
        mcfg = ModelConfig(**job["model"])
        mcfg.widths, mcfg.strides = tuple(mcfg.widths), tuple(mcfg.strides)
        with tempfile.TemporaryDirectory(prefix="pcsym_groups_") as tmp:
            out = run_dir or Path(tmp)
            resume = (out / "last.pt").exists()
            tcfg = TrainConfig(data=job["data"], out=str(out), epochs=job["epochs"], batch_size=job["batch_size"],
                               lr=job["lr"], seed=job["seed"], rotate="z", eval_rotate="z",
                               max_steps=job["max_steps"], threads=job["threads"],
                               val_fraction=job.get("val_fraction", 0.2), select="last")
            summary = train(mcfg, tcfg, resume=resume)
            hist = summary["history"]
            if summary.get("interrupted") or len(hist) < job["epochs"]:  # keep last.pt; the next call resumes it
                raise RuntimeError(f"training stopped after {len(hist)} of {job['epochs']} epochs")
            last = hist[-1]
            res.update(ok=True, val_acc=last["val_acc"], val_macc=last["val_macc"],
                       best_val_acc=summary["best_val_acc"], train_acc=last["train_acc"],
                       train_loss=last["train_loss"], val_acc_per_epoch=[h["val_acc"] for h in hist],
                       train_seconds=round(sum(h["epoch_seconds"] for h in hist), 1), resumed=resume)
            if job.get("test_data"):
                res.update(score_test(out / "last.pt", job["test_data"], job["eval_seeds"]))
    except Exception as exc:
        res.update(ok=False, error=f"{type(exc).__name__}: {exc}".strip()[:500],
                   traceback=traceback.format_exc()[-2000:])
    res["wall_seconds"] = round(time.time() - t0, 1)
    if run_dir is not None and res.get("ok"):
        atomic_write_bytes(run_dir / "result.json",
                           (json.dumps({"job": _job_key(job), "result": res}, indent=1) + "\n").encode())
    return res


def _job_key(job: dict) -> dict:
    """What a finished run's result.json must match to be reused (the model and the budget), as JSON reads it
    back (tuples as lists)."""
    return json.loads(json.dumps({k: job.get(k) for k in ("model", "data", "epochs", "batch_size", "lr", "max_steps",
                                                          "val_fraction", "test_data", "eval_seeds")}))


def score_test(checkpoint: Path, test_data: str, eval_seeds) -> dict:
    """OA and mAcc of ``checkpoint`` on ``test_data`` (its test split, z-rotated), one pass per evaluation
    seed; the run's figure is the mean over the passes (one pass moves by about a point)."""
    from pcsym.training.evaluate import evaluate_checkpoint

    accs, maccs, t0 = [], [], time.time()
    for s in eval_seeds:
        m = evaluate_checkpoint(str(checkpoint), test_data, rotate="z", seed=int(s))
        accs.append(m["overall_accuracy"])
        maccs.append(m["mean_class_accuracy"])
    return {"test_acc": sum(accs) / len(accs), "test_macc": sum(maccs) / len(maccs), "test_acc_per_eval_seed": accs,
            "test_macc_per_eval_seed": maccs, "test_seconds": round(time.time() - t0, 1)}


# ----------------------------------------------------------------------------- report


def mean_std(xs):
    xs = [float(x) for x in xs]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def fmt_acc(m, s, n=None):
    if m is None:
        return "failed"
    return f"{100 * m:.1f} ± {100 * s:.1f}"


def welch(a, b) -> tuple[float | None, float | None]:
    """Welch's two-sided t-test of mean(a) = mean(b) (unequal variances): (t, p); None where either
    side has fewer than two runs or both have no spread."""
    from scipy import stats

    a, b = [float(x) for x in a], [float(x) for x in b]
    if len(a) < 2 or len(b) < 2:
        return None, None
    if max(a) == min(a) and max(b) == min(b):
        return (None, None) if a[0] == b[0] else (math.copysign(math.inf, a[0] - b[0]), 0.0)
    t, pval = stats.ttest_ind(a, b, equal_var=False)
    return float(t), float(pval)


def significance_colour(diff: float | None, p: float | None, alpha: float) -> str:
    """The paper's Fig. 3 colours: implicit significantly better green, significantly worse red, else grey."""
    if diff is None or p is None or p >= alpha:
        return "#7f7f7f"
    return "#2ca02c" if diff > 0 else "#d62728"


def write_chart(path: Path, groups, summary, title: str, chance: float | None = None, ylabel: str | None = None,
                alpha: float = 0.05) -> None:
    """Bars (mean over seeds) with std error bars and the seeds as dots, implicit beside basis for each
    group; above each pair the implicit-minus-basis difference in points, coloured by Welch's test
    (green: implicit significantly better, red: significantly worse, grey: not significant)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(groups))
    width = 0.38
    colors = {"implicit": "#1f77b4", "basis": "#ff7f0e"}
    fig, ax = plt.subplots(figsize=(1.1 * len(groups) + 3, 4.4))
    tops = []
    for i, kern in enumerate(KERNELS):
        means = [summary[g][kern]["mean"] if summary[g][kern]["mean"] is not None else np.nan for g in groups]
        stds = [summary[g][kern]["std"] or 0.0 for g in groups]
        off = (i - 0.5) * width
        ax.bar(x + off, 100 * np.array(means), width, yerr=100 * np.array(stds), capsize=3,
               color=colors[kern], label=f"{kern} kernel", alpha=0.9)
        tops.append(100 * (np.array(means) + np.array(stds)))
        for j, g in enumerate(groups):  # individual seeds
            accs = summary[g][kern]["per_seed"]
            ax.scatter(np.full(len(accs), x[j] + off), 100 * np.array(accs, dtype=float), s=9, color="k", zorder=3)
            if summary[g][kern]["mean"] is None:
                ax.text(x[j] + off, 1, "failed", rotation=90, ha="center", va="bottom", fontsize=8)
    top = np.nanmax(np.vstack(tops), axis=0)
    finite = top[np.isfinite(top)]
    lo = 0.0
    if finite.size:
        bottoms = [100 * (summary[g][k]["mean"] - (summary[g][k]["std"] or 0)) for g in groups for k in KERNELS
                   if summary[g][k]["mean"] is not None]
        lo = max(0.0, 10 * math.floor((min(bottoms) - 8) / 10))
    for j, g in enumerate(groups):
        t = summary[g].get("test", {})
        d, pv = t.get("diff"), t.get("p")
        if d is None or not np.isfinite(top[j]):
            continue
        label = f"{100 * d:+.1f}" + ("" if pv is None else ("*" if pv < alpha else ""))
        ax.text(x[j], top[j] + 1.0, label, ha="center", va="bottom", fontsize=9, fontweight="bold",
                color=significance_colour(d, pv, alpha))
    if chance and 100 * chance > lo:
        ax.axhline(100 * chance, color="gray", ls="--", lw=1, label="chance")
    ax.set_xticks(x)
    ax.set_xticklabels(groups)
    ax.set_ylabel(ylabel or "accuracy, z-rotated (%)")
    ax.set_ylim(lo, min(100, (np.nanmax(finite) if finite.size else 100) + 7))
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.text(0.01, 0.01, f"above each pair: implicit − basis (points); * p < {alpha} (Welch); "
             "green/red: implicit significantly better/worse", fontsize=7, color="#444")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_report(args, command: str, matches, results, wall: float, data_info: dict, env: dict) -> dict:
    metric = "test_acc" if args.test_data else "val_acc"
    summary = {}
    for g in args.groups:
        summary[g] = {}
        for kern in KERNELS:
            runs = [r for r in results if r["group"] == g and r["kernel"] == kern]
            ok = [r for r in runs if r.get("ok")]
            m, s = mean_std([r[metric] for r in ok])
            mm, ms = mean_std([r[metric.replace("acc", "macc")] for r in ok])
            vm, vs = mean_std([r["val_acc"] for r in ok])
            summary[g][kern] = {"mean": m, "std": s, "n": len(ok), "per_seed": [r[metric] for r in ok],
                                "macc_mean": mm, "macc_std": ms, "val_mean": vm, "val_std": vs,
                                "mean_train_seconds": mean_std([r["train_seconds"] for r in ok])[0],
                                "errors": sorted({r["error"] for r in runs if not r.get("ok")})}
        imp, bas = summary[g]["implicit"], summary[g]["basis"]
        t, pval = welch(imp["per_seed"], bas["per_seed"])
        diff = None if imp["mean"] is None or bas["mean"] is None else imp["mean"] - bas["mean"]
        summary[g]["test"] = {"diff": diff, "t": t, "p": pval, "test": "Welch's t, two-sided"}
    ranked = sorted((g for g in args.groups if summary[g]["implicit"]["mean"] is not None),
                    key=lambda g: -summary[g]["implicit"]["mean"])
    ranking = []
    if ranked:  # each group's implicit model against the best one
        best = ranked[0]
        for g in ranked:
            t, pval = welch(summary[best]["implicit"]["per_seed"], summary[g]["implicit"]["per_seed"]) if g != best else (None, None)
            ranking.append({"group": g, "mean": summary[g]["implicit"]["mean"], "std": summary[g]["implicit"]["std"],
                            "behind_best": summary[best]["implicit"]["mean"] - summary[g]["implicit"]["mean"],
                            "p_vs_best": pval})
    budget = {"points": args.points, "epochs": args.epochs, "max_steps_per_epoch": args.max_steps or None,
              "batch_size": args.batch_size, "lr": args.lr, "seeds": list(args.seeds), "k": args.k,
              "reference_widths": list(args.widths), "strides": list(args.strides),
              "invariant_dims": args.invariant_dims, "head_dims": args.head_dims, "val_fraction": args.val_fraction,
              "eval_seeds": list(args.eval_seeds) if args.test_data else None,
              "train_rotation": "z", "eval_rotation": "z", "threads_per_run": args.threads, "jobs": args.jobs}
    if args.test_data:
        what = (f"overall accuracy on the test split of {args.test_data} ({data_info.get('test_shapes')} shapes), "
                f"z-rotated, of the last epoch's model; each run's figure is the mean of {len(args.eval_seeds)} "
                "evaluation passes (seeds " + ",".join(map(str, args.eval_seeds)) + "); mean ± sample std (ddof=1) "
                "over training seeds")
    else:
        what = ("overall validation accuracy after the last epoch, z-rotated validation clouds; "
                "mean ± sample std (ddof=1) over seeds")
    return {"title": "pcsym group comparison: implicit vs basis kernels (cf. Zhdanov et al. 2023, Fig. 3)",
            "metric": metric, "split": split_label(args.test_data), "command": command, "created_utc": env["created_utc"],
            "wall_seconds": round(wall, 1), "budget": budget, "data": data_info, "environment": env,
            "accuracy_metric": what, "significance_level": 0.05,
            "parameter_matching": {g: matches[g] for g in args.groups}, "summary": summary,
            "ranking_implicit": ranking, "runs": results}


def _fmt_p(p):
    if p is None:
        return "–"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def write_markdown(path: Path, rep: dict, groups) -> None:
    b, d = rep["budget"], rep["data"]
    split = rep["split"]
    steps = f", at most {b['max_steps_per_epoch']} steps/epoch" if b["max_steps_per_epoch"] else ""
    L = [f"# {rep['title']}", "",
         f"Budget: {b['epochs']} epochs{steps}, {b['points']} points, batch {b['batch_size']}, lr {b['lr']} (cosine), "
         f"k {b['k']}, implicit reference widths {tuple(b['reference_widths'])}, invariant dims {b['invariant_dims']}, "
         f"{len(b['seeds'])} training seeds {tuple(b['seeds'])}; trained on {d['train']} shapes of `{d['path']}` "
         f"({d['val']} held out per run as a per-epoch monitor). Augmentation: random z-rotation, scale, jitter.", "",
         f"Figure: **{split} OA** — " + rep["accuracy_metric"] + ". Both kernels of a seed train on the same shapes "
         "in the same order.", "",
         f"Command: `{rep['command']}`", "",
         f"Wall time: {rep['wall_seconds'] / 60:.1f} min for this invocation ({b['jobs']} parallel job(s) × "
         f"{b['threads_per_run']} thread(s), {rep['environment']['cpus']} CPUs; runs read back from --runs-dir count "
         f"0); per-run training time is in the table; created {rep['created_utc']}; pcsym {rep['environment']['pcsym']}, "
         f"torch {rep['environment']['torch']}, escnn {rep['environment']['escnn']}.", "",
         f"| group | implicit {split} OA (%) | basis {split} OA (%) | implicit − basis (points) | Welch t | p "
         f"| implicit / basis mAcc (%) | params implicit / basis | widths implicit / basis | train min/run imp / basis |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for g in groups:
        m, s = rep["parameter_matching"][g], rep["summary"][g]
        imp, bas, tt = s["implicit"], s["basis"], s["test"]
        if "error" in m:
            L.append(f"| {g} | – | – | – | – | – | – | – | – | – |")
            notes.append(f"- **{g}**: model construction failed: `{m['error']}`")
            continue

        def secs(x):
            return "–" if x["mean_train_seconds"] is None else f"{x['mean_train_seconds'] / 60:.1f}"

        def macc(x):
            return "–" if x["macc_mean"] is None else f"{100 * x['macc_mean']:.1f}"

        sig = tt["p"] is not None and tt["p"] < rep["significance_level"]
        diff = "–" if tt["diff"] is None else (f"**{100 * tt['diff']:+.1f}**" if sig else f"{100 * tt['diff']:+.1f}")
        flag = "" if m["matched"] else " ⚠"
        tstat = "–" if tt["t"] is None else f"{tt['t']:.2f}"
        L.append(f"| {g} | {fmt_acc(imp['mean'], imp['std'])} | {fmt_acc(bas['mean'], bas['std'])} | {diff} "
                 f"| {tstat} | {_fmt_p(tt['p'])} | {macc(imp)} / {macc(bas)} "
                 f"| {m['implicit_params']:,} / {m['basis_params']:,}{flag} "
                 f"| {tuple(m['implicit_widths'])} / {tuple(m['basis_widths'])} | {secs(imp)} / {secs(bas)} |")
        if not m["matched"]:
            notes.append(f"- **{g}**: parameter counts could not be matched within ±10% (ratio {m['ratio']:.3f}).")
        for kern in KERNELS:
            for e in s[kern]["errors"]:
                notes.append(f"- **{g} / {kern}**: a run failed: `{e}`")
            if s[kern]["n"] < len(b["seeds"]):
                notes.append(f"- **{g} / {kern}**: only {s[kern]['n']} of {len(b['seeds'])} seeds finished.")
    L += ["", f"Bold difference: p < {rep['significance_level']} (Welch's two-sided t-test over the training seeds).", ""]
    if rep.get("ranking_implicit"):
        L += [f"Groups ranked by the implicit model's {split} OA, each against the best (Welch's t):", "",
              "| rank | group | implicit OA (%) | behind the best (points) | p vs best |", "|---|---|---|---|---|"]
        for i, r in enumerate(rep["ranking_implicit"], 1):
            L.append(f"| {i} | {r['group']} | {fmt_acc(r['mean'], r['std'])} | {100 * r['behind_best']:.1f} "
                     f"| {_fmt_p(r['p_vs_best'])} |")
        L.append("")
    L += ["Parameter matching: at the reference widths the implicit model's parameters are counted "
          "(`count_parameters`), then the basis model's widths are multiplied by a factor found by bisection "
          "so that its count is within ±10% of the implicit one (the implicit model is scaled instead if that "
          "is impossible). The head (invariant dims → MLP) is the same in both. Basis-model counts at the "
          "reference widths, before matching: "
          + ", ".join(f"{g} {rep['parameter_matching'][g].get('basis_at_reference_widths', '?'):,}" if
                      isinstance(rep['parameter_matching'][g].get('basis_at_reference_widths'), int) else f"{g} ?"
                      for g in groups) + ".",
          "", f"Per-seed {split} OA (%, seeds in order):", ""]
    for g in groups:
        s = rep["summary"][g]
        L.append(f"- {g}: implicit {[round(100 * a, 1) for a in s['implicit']['per_seed']]}, "
                 f"basis {[round(100 * a, 1) for a in s['basis']['per_seed']]}")
    if notes:
        L += ["", "Notes:", ""] + notes
    stem = path.with_suffix("").name
    L += ["", f"Chart: `{stem}.png` (bars: mean, error bars: std, dots: seeds; above each pair the difference, "
          f"coloured by significance). Raw numbers, every run: `{stem}.json`.", ""]
    path.write_text("\n".join(L))


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="sample_data/modelnet10_mini", help="dataset folder or cache .npz")
    p.add_argument("--groups", type=_groups, default=GROUPS, help="comma-separated groups")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 8, --quick 1)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds 0..n-1 (default 2, --quick 1)")
    p.add_argument("--points", type=int, default=None, help="points per cloud (default 256, --quick 128)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--widths", type=_ints, default=None, help="implicit model's widths (default 16,32,64)")
    p.add_argument("--strides", type=_ints, default=None, help="default 2,4,4")
    p.add_argument("--invariant-dims", type=int, default=64)
    p.add_argument("--head-dims", type=int, default=64)
    p.add_argument("--k", type=int, default=10, help="neighbours per layer")
    p.add_argument("--max-steps", type=int, default=None, help="cap on steps per epoch (0 = full epochs)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs trained in parallel (processes)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of the training split held out per run (per-epoch monitor only; the last epoch is reported)")
    p.add_argument("--test-data", default=None,
                   help="score each run's last epoch on this dataset's test split, z-rotated (e.g. "
                        "../shared/data/modelnet40_testdev_hdf5_1024); without it the runs' validation figure is reported")
    p.add_argument("--eval-seeds", type=_ints0, default=(0, 1, 2),
                   help="evaluation passes per run on --test-data (evaluate --seed); the run's figure is their mean")
    p.add_argument("--runs-dir", default=None,
                   help="keep every run in RUNS_DIR/<group>-<kernel>-s<seed>: finished runs are read back, "
                        "interrupted ones resumed, so the same command continues a study")
    p.add_argument("--report-only", action="store_true",
                   help="with --runs-dir: write the report from the runs finished so far; train nothing")
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (1 epoch of 2 steps, 1 seed, 128 points)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output prefix: writes PREFIX.{md,json,png}")
    a = p.parse_args(argv)
    q = a.quick
    a.epochs = a.epochs if a.epochs is not None else (1 if q else 8)
    a.seeds = tuple(range(a.seeds if a.seeds is not None else (1 if q else 2)))
    a.points = a.points if a.points is not None else (128 if q else 256)
    a.max_steps = a.max_steps if a.max_steps is not None else (2 if q else 0)
    a.widths = a.widths or ((8, 16, 32) if q else (16, 32, 64))
    a.strides = a.strides or (2, 4, 4)
    if q and a.invariant_dims == p.get_default("invariant_dims"):
        a.invariant_dims = 32
    if len(a.widths) != len(a.strides):
        p.error("--widths and --strides need the same number of entries")
    for name in ("epochs", "points", "batch_size", "threads", "jobs", "invariant_dims", "head_dims", "k"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if not a.seeds:
        p.error("--seeds must be positive")
    if a.report_only and not a.runs_dir:
        p.error("--report-only needs --runs-dir (the finished runs to report)")
    if not 0 < a.val_fraction < 1:
        p.error("--val-fraction must be in (0, 1)")
    if a.test_data is not None and not Path(a.test_data).exists():
        p.error(f"--test-data: no such file or folder: {a.test_data}")
    return a


def main(argv=None) -> int:
    raw_argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(raw_argv)
    command = "python -m benchmarks.accuracy.groups_report" + "".join(" " + shlex.quote(x) for x in raw_argv)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    import importlib.metadata as md

    import pcsym
    from pcsym.data.datasets import load_dataset
    from pcsym.data.splits import split_indices

    t_start = time.time()
    data_path = Path(args.data)
    if not data_path.is_absolute() and not data_path.exists() and (ROOT / data_path).exists():
        data_path = ROOT / data_path
    data = load_dataset(data_path, points=args.points)  # prepares (caches) a folder once, up front
    data_file = str(data.path or data_path)
    labels = np.asarray(data.labels)
    pool = np.flatnonzero(np.asarray(data.split) == "train")
    tr, va = (split_indices(data, s, args.val_fraction, args.seeds[0]) for s in ("train", "val"))  # the runs' own split
    args.num_classes = len(data.class_names)
    data_info = {"path": str(args.data), "cache": data_file, "shapes": int(len(labels)), "train_pool": int(len(pool)),
                 "train": int(len(tr)), "val": int(len(va)), "classes": int(len(data.class_names)),
                 "class_names": [str(c) for c in data.class_names]}
    del data
    if args.test_data:
        test = load_dataset(args.test_data, points=args.points)  # cached once here, not by two workers at once
        data_info.update(test_path=str(args.test_data), test_shapes=int(np.sum(np.asarray(test.split) == "test")),
                         eval_seeds=list(args.eval_seeds))
        del test
    print(f"[groups_report] data {args.data}: {data_info['train']} train / {data_info['val']} val shapes, "
          f"{data_info['classes']} classes", flush=True)

    matches = {}
    for g in args.groups:
        t0 = time.time()
        matches[g] = m = match_group(args, g)
        if "error" in m:
            print(f"[groups_report] {g}: model construction FAILED: {m['error']}", flush=True)
        else:
            print(f"[groups_report] {g}: implicit {m['implicit_params']:,} params {tuple(m['implicit_widths'])}, "
                  f"basis {m['basis_params']:,} params {tuple(m['basis_widths'])} (ratio {m['ratio']:.3f}, "
                  f"{m['searched']} widths x{m['multiplier']:.2f}{'' if m['matched'] else ', NOT within 10%'}) "
                  f"[{time.time() - t0:.0f}s]", flush=True)

    jobs = []
    for g in args.groups:
        m = matches[g]
        if "error" in m:
            continue
        for kern in KERNELS:
            cfg = base_model_config(args, g, kern, m[f"{kern}_widths"])
            for seed in args.seeds:
                jobs.append({"group": g, "kernel": kern, "seed": seed, "model": cfg.to_dict(), "data": data_file,
                             "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                             "max_steps": args.max_steps, "threads": args.threads,
                             "val_fraction": args.val_fraction, "test_data": args.test_data,
                             "eval_seeds": list(args.eval_seeds), "runs_dir": args.runs_dir,
                             "report_only": args.report_only})
    # longest first so parallel jobs finish together: escnn's basis sampler is the slow part,
    # slowest for the finite groups (measured: ~10-20x the implicit kernel's time per step)
    def cost(j):
        from pcsym.models.groups import get_group

        spec = get_group(j["group"])
        if j["kernel"] == "implicit":
            return 0.1
        return 3.0 if (not spec.continuous and spec.order > 1) else 1.0

    # seed by seed, so that an interrupted study has whole seeds of every cell
    jobs.sort(key=lambda j: (j["seed"], -cost(j), args.groups.index(j["group"])))
    results = []

    def done(r):
        results.append(r)
        status = (f"val {100 * r['val_acc']:.1f}% (best {100 * r['best_val_acc']:.1f}%)"
                  + (f", test {100 * r['test_acc']:.1f}%" if "test_acc" in r else "") if r.get("ok")
                  else f"FAILED: {r['error']}")
        print(f"[groups_report] {len(results)}/{len(jobs)} {r['group']:>7} {r['kernel']:>8} seed {r['seed']}: "
              f"{status} [{r['wall_seconds']:.0f}s]", flush=True)

    if args.jobs > 1 and len(jobs) > 1 and not args.report_only:
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as ex:
            for fut in cf.as_completed([ex.submit(run_one, j) for j in jobs]):
                done(fut.result())
    else:
        for j in jobs:
            done(run_one(j))
    order = {(j["group"], j["kernel"], j["seed"]): i for i, j in enumerate(
        sorted(jobs, key=lambda j: (args.groups.index(j["group"]), KERNELS.index(j["kernel"]), j["seed"])))}
    results.sort(key=lambda r: order[(r["group"], r["kernel"], r["seed"])])
    wall = time.time() - t_start

    env = {"created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "pcsym": pcsym.__version__,
           "torch": torch.__version__, "escnn": md.version("escnn"), "python": platform.python_version(),
           "cpus": os.cpu_count()}
    rep = build_report(args, command, matches, results, wall, data_info, env)
    out = out_prefix(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    beside(out, ".json").write_text(json.dumps(rep, indent=2) + "\n")
    write_markdown(beside(out, ".md"), rep, args.groups)
    b = rep["budget"]
    split = rep["split"]
    write_chart(beside(out, ".png"), list(args.groups), rep["summary"],
                f"Implicit vs basis kernels per group, parameter-matched: {b['epochs']} epochs, {b['points']} points, "
                f"{len(b['seeds'])} seeds, {data_info['train']} train shapes\n({split} OA, z-rotated; mean ± std over seeds)",
                chance=1.0 / max(1, data_info["classes"]), ylabel=f"{split} OA, z-rotated (%)")
    print(f"[groups_report] wrote {beside(out, '.md')}, .json, .png in {wall / 60:.1f} min", flush=True)
    failed = sum(1 for r in results if not r.get("ok"))
    return 1 if failed == len(results) and results else 0


if __name__ == "__main__":
    sys.exit(main())
