"""Whole-classifier throughput and cost scaling.

1. Training throughput (shapes/s: forward + backward + AdamW step, batch 16) and inference throughput
   (shapes/s: eval mode, no_grad, batch 16) of the default classifier (``ModelConfig(group=g, class_names=
   10 names)``, 1024 points) for groups so2, o2, so3, o3, m, inv, trivial.
2. Scaling of one training forward + backward of the O(2) classifier with the number of points N (k = 10)
   and with k (N = 1024): a least-squares fit of log(time) against log(N*k) gives the exponent (1 = cost
   linear in N*k), and the peak extra resident memory is fitted the same way (1 = no O(N^2) tensor).

Every configuration runs in a fresh Python process (honest peak-memory figures).

    python benchmarks/bench_model.py [--quick] [--threads N]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

GROUPS = ["so2", "o2", "so3", "o3", "m", "inv", "trivial"]
CLASSES = [f"class{i}" for i in range(10)]
SCALING_GROUP = "o2"


# ----------------------------------------------------------------------------- worker (fresh process)


def make_batch(b: int, n: int, seed: int = 0):
    """Points on a randomly stretched ellipsoid with their (exact) unit normals, and random labels."""
    import torch

    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(b, n, 3, generator=g), dim=-1)
    axes = 0.5 + torch.rand(b, 1, 3, generator=g)
    pos = u * axes
    normals = torch.nn.functional.normalize(u / axes, dim=-1)
    labels = torch.randint(0, len(CLASSES), (b,), generator=g)
    return pos, normals, labels


def edge_count(model, n: int, k: int) -> int:
    """Number of kNN edges (query points x neighbours) over all blocks for n input points."""
    total, n_in = 0, n
    for n_out in model.layer_points(n):
        total += n_out * min(k, n_in)
        n_in = n_out
    return total


def worker(spec: dict) -> dict:
    import torch

    C.quiet_warnings()
    C.set_threads(spec["threads"])
    from pcsym.config import ModelConfig
    from pcsym.models.classifier import build_model, count_parameters

    torch.manual_seed(0)
    b, n, k = spec["batch"], spec["points"], spec["k"]
    model = build_model(ModelConfig(group=spec["group"], class_names=list(CLASSES), points=n, k=k))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    pos, normals, labels = make_batch(b, n)
    res = {"group": spec["group"], "batch": b, "points": n, "k": k, "params": count_parameters(model),
           "edges_per_shape": edge_count(model, n, k)}

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(pos, normals), labels).backward()
        if spec["mode"] == "throughput":
            opt.step()

    model.train()
    with C.PeakMemory() as mem:
        times = C.time_repeats(train_step, spec["repeats"], warmup=1)
    res.update(train_times_s=times, train_s=C.median(times), train_peak_mb=mem.delta,
               train_shapes_per_s=b / C.median(times))
    if spec["mode"] == "throughput":
        model.eval()

        def infer():
            with torch.no_grad():
                model(pos, normals)

        times = C.time_repeats(infer, spec["repeats"], warmup=1)
        res.update(infer_times_s=times, infer_s=C.median(times), infer_shapes_per_s=b / C.median(times))
    return res


# ----------------------------------------------------------------------------- driver


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=C.argparse.SUPPRESS)
    p.add_argument("--skip-throughput", action="store_true", help="only the scaling part")
    p.add_argument("--skip-scaling", action="store_true", help="only the throughput part")
    args = p.parse_args()
    if args.worker:
        for spec in json.loads(args.worker):
            spec["threads"] = args.threads
            try:
                C.emit_result(worker(spec))
            except Exception as exc:  # noqa: BLE001
                C.emit_result({"group": spec["group"], "points": spec["points"], "k": spec["k"],
                               "error": repr(exc)[:300]})
        return 0

    quick = args.quick
    if quick:
        tp = dict(batch=4, points=512, k=10, repeats=1, groups=["o2", "m", "trivial"])
        sc = dict(batch=2, points=(256, 512, 1024), ks=(5, 10, 20), repeats=2)
    else:
        tp = dict(batch=16, points=1024, k=10, repeats=10, groups=GROUPS)
        sc = dict(batch=8, points=(256, 512, 1024, 2048, 4096), ks=(5, 10, 20, 40), repeats=7)
    env = C.environment(args.threads, quick)
    print(f"bench_model: {args.threads} thread(s){' [QUICK]' if quick else ''}", flush=True)
    if env["contention_note"]:
        print("warning: " + env["contention_note"], flush=True)
    me = Path(__file__)

    def run(specs):  # one process for all in --quick, else a fresh process per configuration
        if quick:
            return C.run_workers(me, specs, args.threads)
        return [C.run_workers(me, [s], args.threads)[0] for s in specs]

    # --- 1. throughput per group
    tp_rows = []
    if not args.skip_throughput:
        specs = [dict(group=g, batch=tp["batch"], points=tp["points"], k=tp["k"], repeats=tp["repeats"],
                      mode="throughput") for g in tp["groups"]]
        for r in run(specs):
            if "error" in r:
                print(f"  {r.get('group')}: FAILED {r['error']}", flush=True)
            else:
                print(f"  {r['group']:8s} train {r['train_shapes_per_s']:7.1f} shapes/s  "
                      f"infer {r['infer_shapes_per_s']:7.1f} shapes/s  peak +{r['train_peak_mb']:.0f} MiB", flush=True)
            tp_rows.append(r)
    tp_cols = [("group", "group"), ("params", "params"), ("train_s", "train step s (median)"),
               ("train_shapes_per_s", "train shapes/s"), ("infer_s", "inference batch s"),
               ("infer_shapes_per_s", "inference shapes/s"), ("train_peak_mb", "train peak +MiB")]

    # --- 2. scaling (O(2)): fwd+bwd of one batch
    sc_rows, fit = [], {}
    if not args.skip_scaling:
        cfgs = [(n, 10) for n in sc["points"]] + [(1024 if not quick else 512, kk) for kk in sc["ks"] if kk != 10]
        specs = [dict(group=SCALING_GROUP, batch=sc["batch"], points=n, k=kk, repeats=sc["repeats"], mode="scaling")
                 for n, kk in cfgs]
        for r in run(specs):
            if "error" in r:
                print(f"  N={r.get('points')} k={r.get('k')}: FAILED {r['error']}", flush=True)
                continue
            r["nk"] = r["points"] * r["k"]
            r["sweep"] = "k" if r["points"] == cfgs[-1][0] and r["k"] != 10 else "N"
            r["us_per_edge"] = r["train_s"] / (r["batch"] * r["edges_per_shape"]) * 1e6
            print(f"  N={r['points']:5d} k={r['k']:3d}  fwd+bwd {r['train_s']:7.3f} s  peak +{r['train_peak_mb']:.0f} MiB",
                  flush=True)
            sc_rows.append(r)
        sc_rows.sort(key=lambda r: (r["sweep"], r["nk"]))
        ok = [r for r in sc_rows if r["train_s"] > 0]
        if len(ok) >= 3:
            nk = [r["nk"] for r in ok]
            fit["time_exponent_nk"], _ = C.loglog_fit(nk, [r["train_s"] for r in ok])
            fit["time_exponent_edges"], _ = C.loglog_fit([r["edges_per_shape"] for r in ok], [r["train_s"] for r in ok])
            for sweep in ("N", "k"):
                s = [r for r in ok if r["sweep"] == sweep or (sweep == "k" and r["k"] == 10 and r["points"] == cfgs[-1][0])]
                if len(s) >= 2:
                    fit[f"time_exponent_{sweep}_sweep"], _ = C.loglog_fit([r["nk"] for r in s], [r["train_s"] for r in s])
            mem_ok = [r for r in ok if r["train_peak_mb"] > 0]
            if len(mem_ok) >= 3:
                fit["memory_exponent_nk"], _ = C.loglog_fit([r["nk"] for r in mem_ok], [r["train_peak_mb"] for r in mem_ok])
            big = [r for r in ok if r["nk"] >= sorted(nk)[len(nk) // 2]]  # upper half: fixed overheads amortised
            if len(big) >= 2:
                fit["time_exponent_nk_upper_half"], _ = C.loglog_fit([r["nk"] for r in big], [r["train_s"] for r in big])
    sc_cols = [("sweep", "sweep"), ("points", "N"), ("k", "k"), ("nk", "N*k"), ("edges_per_shape", "edges/shape"),
               ("train_s", "fwd+bwd s (median)"), ("us_per_edge", "us per edge"), ("train_peak_mb", "peak +MiB")]

    exp = fit.get("time_exponent_nk")
    headline = f"scaling exponent in N*k: {exp:.2f}" if exp is not None else "scaling exponent in N*k: n/a"
    fit_lines = "\n".join(f"- {k}: {v:.3f}" for k, v in fit.items())
    md = "\n\n".join([
        "# bench_model: classifier throughput and scaling",
        C.env_markdown_shared_process(env),
        f"## Throughput (default classifier, {tp['points']} points, batch {tp['batch']}, k = {tp['k']})\n\n"
        "Train = forward + cross-entropy backward + AdamW step (train mode, random sampling order); inference = "
        "eval mode under no_grad. Medians of repeats after one warm-up; synthetic ellipsoid clouds with exact "
        "normals. *train peak +MiB* = peak resident memory during the training steps minus resident memory "
        "before them, fresh process per group.",
        C.table(tp_rows, tp_cols) if tp_rows else "(skipped)",
        f"## Scaling ({SCALING_GROUP}, batch {sc['batch']}, one forward + backward, no optimizer step)\n\n"
        "*edges/shape* counts query points x neighbours over all blocks (strides 2, 4, 4, 1; the last "
        "blocks clamp k to the points available). Exponents are least-squares slopes of log-log fits over all "
        "rows (N sweep and k sweep together) unless named otherwise.",
        C.table(sc_rows, sc_cols) if sc_rows else "(skipped)",
        fit_lines or "(no fit)",
        f"**{headline}**",
    ])
    data = {"benchmark": "model", "env": env, "throughput_setup": tp, "scaling_setup": sc,
            "throughput": tp_rows, "scaling": sc_rows, "fit": fit, "headline": headline}
    jp, mp = C.write_results(args.out, "bench_model", data, md, quick)
    print()
    if tp_rows:
        print(C.table(tp_rows, tp_cols) + "\n")
    if sc_rows:
        print(C.table(sc_rows, sc_cols) + "\n")
    print(fit_lines)
    print(f"\nwrote {jp} and {mp}")
    print(headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
