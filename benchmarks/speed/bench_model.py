"""Whole-classifier throughput and cost scaling.

1. Training throughput (shapes/s: forward + backward + AdamW step, batch 16) and inference throughput
   (shapes/s: eval mode, no_grad, batch 16) of the default classifier (``ModelConfig(group=g, class_names=
   10 names)``, 1024 points) for groups so2, o2, so3, o3, m, inv, f, trivial; with the basis kernel too
   (``--kernels implicit,basis``, the default): the basis model's widths scaled until its parameter count
   matches the implicit model's (within 10%, as benchmarks/accuracy/groups_report.py does), and its speed relative
   to the implicit model's.
2. Scaling of one training forward + backward of the O(2) classifier with the number of points N (k = 10)
   and with k (N = 1024): a least-squares fit of log(time) against log(N*k) gives the exponent (1 = cost
   linear in N*k), and the peak extra resident memory is fitted the same way (1 = no O(N^2) tensor).

Every configuration runs in a fresh Python process (honest peak-memory figures).

3. ``--baseline REF``: the shipped recipes (so3, o2; batch 16, 1024 points) timed with this tree and with
   git ref REF (checked out as a worktree in /tmp/pcsym_ref, run with PYTHONPATH pointing there), in fresh
   processes alternating old/new; per round the ratio of the best train step (forward + backward + AdamW)
   and of the best eval forward; the headline is the median ratio. Also model build time (escnn already
   imported) and the model FLOP utilisation (matmul FLOPs of one step counted by torch's FlopCounterMode,
   with the compiled per-edge MLP's maths counted through its torch spelling /
   step time / the best torch.mm rate measured in the same process). ``--profile`` adds a torch.profiler
   breakdown of one step (op categories, forward time per layer part) for both trees.

   ``--epoch-data DIR`` also times one full epoch of each recipe with ``pcsym train`` (the issue's measurement).
   ``--levers`` also times, on this tree, what the shipped models' levers (ppf edge features, random-fps
   sampling) cost per step over the plain recipes.

    python -m benchmarks.speed.bench_model [--quick] [--threads N] [--idle HOW] [--groups G,..] [--kernels K,..]
        [--baseline REF [--rounds R] [--profile] [--levers] [--epoch-data DIR [--epoch-rounds R]
        [--epoch-recipes so3,o2,so3-shipped,o2-shipped]]]
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from benchmarks import common as C

GROUPS = ["so2", "o2", "so3", "o3", "m", "inv", "f", "trivial"]
KERNELS = ["implicit", "basis"]
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
    cfg = model.cfg
    if hasattr(cfg, "block_points"):
        sizes = [m for m, _ in cfg.block_points(n)]
    else:  # older refs
        sizes = cfg.layer_points(n) if hasattr(cfg, "layer_points") else model.layer_points(n)
    for n_out in sizes:
        total += n_out * min(k, n_in)
        n_in = n_out
    return total


@contextlib.contextmanager
def training_step(model, opt, pos, normals, labels, loss_fn, sharded: bool = True, optimizer_step: bool = True):
    """The training step as the tree's `pcsym train` takes it: where the tree has pcsym.models.shards, the batch in
    shards side by side, one per torch thread (torch at one intra-op thread inside this block); otherwise, or
    with ``sharded=False``, forward + backward of the whole batch on all threads."""
    import torch

    shards = (tree_module("pcsym.models.shards") or tree_module("pcsym.shards")) if sharded else None

    def finish():
        if optimizer_step:
            opt.step()

    if shards is None:
        def plain():
            opt.zero_grad(set_to_none=True)
            loss_fn(model(pos, normals), labels).backward()
            finish()

        yield plain
        return
    with shards.Shards(torch.get_num_threads()) as workers:
        def in_shards():
            opt.zero_grad(set_to_none=True)
            shards.forward_backward(model, workers, pos, normals, labels, loss_fn)
            finish()

        yield in_shards


def worker(spec: dict) -> dict:
    import torch

    C.quiet_warnings()
    C.set_threads(spec["threads"])
    from pcsym.config import ModelConfig
    from pcsym.models.classifier import build_model, count_parameters

    torch.manual_seed(0)
    b, n, k = spec["batch"], spec["points"], spec["k"]
    kernel = spec.get("kernel", "implicit")
    cfg = ModelConfig(group=spec["group"], class_names=list(CLASSES), points=n, k=k)
    res = {"group": spec["group"], "kernel": kernel, "batch": b, "points": n, "k": k}
    if kernel != "implicit":  # matched parameters: this kernel's widths scaled to the implicit model's count
        from dataclasses import replace

        from benchmarks.accuracy.groups_report import search_widths

        target = count_parameters(build_model(cfg))
        # multipliers of 0.3-1.5 match the default widths; hi=4 spares building 12x-wide probe models
        _, widths, _ = search_widths(replace(cfg, kernel=kernel, class_names=list(CLASSES)), target, hi=4.0)
        cfg = replace(cfg, kernel=kernel, widths=widths, class_names=list(CLASSES))
        res["implicit_params"] = target
        torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    pos, normals, labels = make_batch(b, n)
    res.update(widths=list(cfg.widths), params=count_parameters(model), edges_per_shape=edge_count(model, n, k))

    model.train()
    stepping = spec["mode"] == "throughput"
    with training_step(model, opt, pos, normals, labels, loss_fn, optimizer_step=stepping) as step, \
            C.PeakMemory() as mem:
        times = C.time_repeats(step, spec["repeats"], warmup=1)
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


# ----------------------------------------------------------------------------- recipes vs a baseline ref

RECIPES = {"so3": dict(group="so3", widths=(48, 96, 192), strides=(2, 4, 4), max_freq=2, points=1024, k=10),
           "o2": dict(group="o2", widths=(32, 64, 128), strides=(2, 4, 4), points=1024)}
#: the shipped models' levers on top of the recipes (this tree only: --levers)
LEVERS = {"+ppf": dict(edge_features="ppf"), "+ppf +random-fps": dict(edge_features="ppf", sampling="random-fps")}
OP_CATEGORIES = {
    "matmul": ("aten::mm", "aten::bmm", "aten::addmm", "aten::matmul", "aten::linear", "aten::einsum"),
    "kNN topk": ("aten::topk", "aten::sort", "pcsym::knn"),
    "kernel MLP (compiled)": ("pcsym::edge_mlp", "_EdgeMLP", "_EdgeMLPBackward"),
    "aggregation (compiled)": ("pcsym::aggregate", "_Aggregate", "_AggregateBackward"),
    "indexing (gather/scatter)": ("aten::index_select", "aten::index", "aten::gather", "aten::scatter_add_",
                                  "aten::index_add_", "aten::index_put_", "aten::_index_put_impl_", "aten::take",
                                  "aten::embedding_dense_backward", "aten::scatter_add"),
    "elementwise": ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::where", "aten::elu",
                    "aten::elu_backward", "aten::sigmoid", "aten::sigmoid_backward", "aten::copy_", "aten::fill_",
                    "aten::exp", "aten::pow", "aten::neg", "aten::add_", "aten::mul_", "aten::sqrt", "aten::cat",
                    "aten::lerp_", "aten::clamp_min", "aten::addcmul_", "aten::addcdiv_", "aten::div_",
                    "aten::zero_", "aten::threshold_backward", "aten::sub_", "aten::rsqrt", "aten::ones_like",
                    "aten::zeros_like", "aten::zeros"),
    "reductions": ("aten::sum", "aten::mean", "aten::linalg_vector_norm", "aten::max", "aten::std", "aten::var"),
}
LAYER_PARTS = ("conv.embed", "conv.mlp", "norm", "act")


def tree_module(name: str):
    """``name`` imported from the pcsym tree this interpreter runs, or None where that tree has no such
    module: an editable install of another tree (the working copy) would otherwise supply it, and the
    baseline would run this tree's code (it did for the allocator before this check)."""
    import importlib
    import importlib.util

    import pcsym

    root = Path(pcsym.__file__).resolve().parent
    try:
        spec = importlib.util.find_spec(name)
    except ImportError:
        return None
    if spec is None or spec.origin is None or root not in Path(spec.origin).resolve().parents:
        return None
    return importlib.import_module(name)


def recipe_worker(spec: dict) -> dict:
    """One recipe in this interpreter (whichever pcsym PYTHONPATH selects): build, train step, eval."""
    import time

    import torch

    C.quiet_warnings()
    C.set_threads(spec["threads"])
    import escnn  # noqa: F401  (imported before the build clock starts: the build is the model's own cost)
    import pcsym
    from pcsym.config import ModelConfig
    from pcsym.models.classifier import build_model

    allocator = tree_module("pcsym.training.allocator") or tree_module("pcsym.allocator")  # what `pcsym train` does to the allocator, in trees that have it
    res_allocator = allocator.keep_freed_memory() if allocator else False
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_model(ModelConfig(class_names=list(CLASSES), **RECIPES[spec["recipe"]],
                                    **LEVERS.get(spec.get("lever"), {})))
    build_s = time.perf_counter() - t0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pos, normals, labels = make_batch(spec["batch"], 1024)

    loss_fn = torch.nn.functional.cross_entropy

    def best(fn, n):
        fn()
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return min(ts)

    model.train()
    with training_step(model, opt, pos, normals, labels, loss_fn) as train_step:
        train_s = best(train_step, spec["repeats"])
    res = {"recipe": spec["recipe"], "pcsym": str(Path(pcsym.__file__).parent), "build_s": build_s,
           "allocator_tuned": res_allocator, "sharded": (tree_module("pcsym.models.shards") or tree_module("pcsym.shards")) is not None, "train_s": train_s}
    # the profiler and the FLOP counter see the calling thread only: the unsharded step (the same ops and maths)
    with training_step(model, opt, pos, normals, labels, loss_fn, sharded=False) as plain_step:
        if spec.get("profile"):
            res["profile"] = profile_step(model, plain_step)
        if spec.get("flops"):
            from torch.utils.flop_counter import FlopCounterMode

            fused = tree_module("pcsym.models.fused")  # the compiled kernels are invisible to the counter:
            torch_spelling = fused.torch_spelling if fused else contextlib.nullcontext  # count the torch spelling
            with torch_spelling(), FlopCounterMode(display=False) as fc:
                plain_step()
            res["train_flops"] = fc.get_total_flops()
            a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
            res["mm_peak_flops"] = 2 * 1024 ** 3 / best(lambda: torch.mm(a, b), 20)
    model.eval()
    with torch.no_grad():
        res["eval_s"] = best(lambda: model(pos, normals), spec["repeats"])
    res["evaluate_s"] = best(lambda: evaluate_batches(model, pos, normals), spec["repeats"]) / EVAL_BATCHES
    return res


EVAL_BATCHES = 4


def evaluate_batches(model, pos, normals) -> None:
    """EVAL_BATCHES batches the way the tree's ``pcsym evaluate`` runs them (its ``predict``): side by side
    on torch's threads where the tree has ``batch_workers``, else one after the other."""
    import torch

    evaluate = tree_module("pcsym.training.evaluate") or tree_module("pcsym.evaluate")
    batch_workers = getattr(evaluate, "batch_workers", None)
    if batch_workers is None:
        with torch.no_grad():
            for _ in range(EVAL_BATCHES):
                model(pos, normals)
        return

    def one():
        with torch.no_grad():
            return model(pos, normals)

    with batch_workers(torch.get_num_threads()) as submit:
        for f in [submit(one) for _ in range(EVAL_BATCHES)]:
            f.result()


def profile_step(model, train_step, steps: int = 3) -> dict:
    """torch.profiler over ``steps`` train steps: self CPU time per op category and forward time per layer part."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    handles = []
    for i, block in enumerate(model.blocks):
        for part in LAYER_PARTS:
            stack = []
            mod = block.get_submodule(part)
            handles.append(mod.register_forward_pre_hook(
                lambda m, a, s=stack, n=f"L:block{i}.{part}": s.append(record_function(n).__enter__())))
            handles.append(mod.register_forward_hook(lambda m, a, o, s=stack: s.pop().__exit__(None, None, None)))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train_step()
    for h in handles:
        h.remove()
    ops, layers, total = {}, {}, 0.0
    for e in prof.key_averages():
        if e.key.startswith("L:"):
            layers[e.key[2:]] = e.cpu_time_total / steps / 1e3
            continue
        ms = e.self_cpu_time_total / steps / 1e3
        total += ms
        cat = next((c for c, names in OP_CATEGORIES.items() if e.key in names), "other")
        ops[cat] = ops.get(cat, 0.0) + ms
    return {"self_ms_total": total, "categories_ms": ops, "layer_forward_ms": layers}


def run_recipe(spec: dict, pythonpath: str | None, threads: int) -> dict:
    """One recipe in a fresh process that imports pcsym from the tree ``pythonpath`` (None: the installed one)
    and this benchmark from this tree: a temporary folder holding only a link to this tree's ``benchmarks``
    comes first on PYTHONPATH, the timed tree second (its own ``benchmarks``, if any, stays shadowed)."""
    import os
    import subprocess
    import tempfile

    env = dict(os.environ, PYTHONWARNINGS="ignore")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    with tempfile.TemporaryDirectory(prefix="pcsym-harness-") as harness:
        os.symlink(C.BENCH_DIR, Path(harness) / "benchmarks")
        env["PYTHONPATH"] = os.pathsep.join([harness] + ([pythonpath] if pythonpath else []))
        cmd = [sys.executable, "-m", __spec__.name, "--recipe-worker", json.dumps(spec), "--threads", str(threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd="/", env=env)
    rows = [json.loads(l[len("RESULT "):]) for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    return rows[0] if rows else {"error": " | ".join((proc.stderr or "").strip().splitlines()[-3:])}


def baseline_main(args) -> int:
    import statistics
    import subprocess

    repo = C.REPO
    ref_dir = Path("/tmp/pcsym_ref")
    sha = subprocess.run(["git", "rev-parse", args.baseline], cwd=repo, capture_output=True, text=True,
                         check=True).stdout.strip()
    if ref_dir.exists():
        subprocess.run(["git", "checkout", "--detach", "--quiet", sha], cwd=ref_dir, check=True)
    else:
        subprocess.run(["git", "worktree", "add", "--detach", str(ref_dir), sha], cwd=repo, check=True,
                       capture_output=True)
    trees = {"ref": str(ref_dir), "new": str(repo)}
    rounds = 1 if args.quick else args.rounds
    repeats = 2 if args.quick else 5
    env = C.environment(args.threads, args.quick, args.idle)
    idle = bool(args.idle)
    print(f"bench_model --baseline {args.baseline} ({sha[:8]}): {args.threads} thread(s), {rounds} round(s); "
          f"timings are best-of-repeats{'' if idle else ', machine not certified idle (--idle)'}", flush=True)
    rows, ratios = [], {}
    for rnd in range(rounds):
        for recipe in RECIPES:
            got = {}
            for which in (("ref", "new") if rnd % 2 == 0 else ("new", "ref")):  # alternate the order too
                spec = dict(recipe=recipe, batch=4 if args.quick else 16, repeats=repeats, threads=args.threads,
                            flops=which == "new" and rnd == 0, profile=bool(args.profile) and rnd == 0)
                r = run_recipe(spec, trees[which], args.threads)
                r.update(tree=which, round=rnd)
                if "error" in r:
                    print(f"  {recipe} {which}: FAILED {r['error']}", flush=True)
                    continue
                print(f"  round {rnd} {recipe:4s} {which}: build {r['build_s']:6.2f} s  train step {r['train_s']:.3f} s"
                      f"  eval {r['eval_s']:.3f} s  evaluate {r['evaluate_s']:.3f} s/batch", flush=True)
                rows.append(r)
                got[which] = r
            if len(got) == 2:
                ratios.setdefault(recipe, []).append((got["ref"]["train_s"] / got["new"]["train_s"],
                                                      got["ref"]["eval_s"] / got["new"]["eval_s"],
                                                      got["ref"]["evaluate_s"] / got["new"]["evaluate_s"]))
    speed = {k: tuple(statistics.median(r[i] for r in v) for i in range(3)) for k, v in ratios.items()}
    mfu = {}
    for r in rows:
        if r["tree"] == "new" and "train_flops" in r:
            mfu[r["recipe"]] = dict(flops=r["train_flops"], mm_peak_gflops=r["mm_peak_flops"] / 1e9,
                                    achieved_gflops=r["train_flops"] / r["train_s"] / 1e9,
                                    utilisation=r["train_flops"] / r["train_s"] / r["mm_peak_flops"])
    headline = (f"train speed-up vs {args.baseline}: "
                + ", ".join(f"{k} {v[0]:.2f}x" for k, v in speed.items())
                + " (eval forward " + ", ".join(f"{k} {v[1]:.2f}x" for k, v in speed.items())
                + "; evaluate's batches " + ", ".join(f"{k} {v[2]:.2f}x" for k, v in speed.items()) + ")")
    lines = ["# bench_model --baseline: shipped recipes, this tree vs " + f"`{args.baseline}` ({sha[:8]})",
             C.env_markdown_shared_process(env),
             "Fresh process per (recipe, tree, round), old/new alternating; times are the best of "
             f"{repeats} steps after one warm-up (best-of is the least contention-sensitive statistic); "
             "build = `build_model` with escnn already imported (second run: layer cache warm). "
             + ("Idle machine (see above); still, compare only the ratios (the CPU's speed drifts)." if idle else
                "**Not certified idle**: compare only the ratios."),
             C.table(rows, [("round", "round"), ("recipe", "recipe"), ("tree", "tree"), ("build_s", "build s"),
                            ("train_s", "train step s"), ("eval_s", "eval forward s"),
                            ("evaluate_s", "evaluate s/batch")]),
             f"evaluate s/batch: {EVAL_BATCHES} batches as the tree's `pcsym evaluate` runs them (this tree: side by "
             "side on torch's threads, one each; the baseline: one after the other on all threads), per batch. "
             "train step: as the tree's `pcsym train` takes it (trees with `pcsym.models.shards`: the batch in shards side "
             "by side, one per thread; the profiles below are of the unsharded step, as the profiler sees only its "
             "own thread).",
             "| recipe | train speed-up | eval forward speed-up | evaluate speed-up | matmul GFLOP/step | "
             "achieved GFLOP/s | torch.mm GFLOP/s | MFU |\n"
             "|---|---|---|---|---|---|---|---|\n" + "\n".join(
                 f"| {k} | {v[0]:.2f}x | {v[1]:.2f}x | {v[2]:.2f}x | {mfu.get(k, {}).get('flops', 0) / 1e9:.2f} | "
                 f"{mfu.get(k, {}).get('achieved_gflops', 0):.2f} | {mfu.get(k, {}).get('mm_peak_gflops', 0):.1f} | "
                 f"{100 * mfu.get(k, {}).get('utilisation', 0):.1f}% |" for k, v in speed.items())]
    for r in rows:
        if "profile" in r:
            p = r["profile"]
            lines.append(f"### profile {r['recipe']} ({r['tree']}): self CPU ms per unsharded train step, total "
                         f"{p['self_ms_total']:.0f}\n\n" + "\n".join(
                             f"- {c}: {ms:.1f} ms ({100 * ms / p['self_ms_total']:.0f}%)"
                             for c, ms in sorted(p["categories_ms"].items(), key=lambda x: -x[1]))
                         + "\n\nforward ms per layer part: " + ", ".join(
                             f"{k} {v:.1f}" for k, v in sorted(p["layer_forward_ms"].items())))
    levers = lever_rounds(args, rounds, repeats, trees["new"]) if args.levers else None
    if levers:
        lines.append(levers["markdown"])
    epochs = epoch_rounds(args, trees, sha) if args.epoch_data else None
    if epochs:
        lines.append(epochs["markdown"])
        headline = epochs["headline"] + "; per step: " + headline[len("train speed-up vs " + args.baseline + ": "):]
    lines.append(f"**{headline}**")
    data = {"benchmark": "model_baseline", "epochs": epochs, "levers": levers, "env": env, "baseline": args.baseline, "baseline_sha": sha,
            "rows": rows, "speedup": speed, "mfu": mfu, "headline": headline}
    jp, mp = C.write_results(args.out, "bench_model_baseline", data, "\n\n".join(lines), args.quick)
    print("\n\n".join(lines[2:]))
    C.print_written(jp, mp, headline)
    if mfu:
        print("model FLOP utilisation: " + ", ".join(f"{k} {100 * v['utilisation']:.1f}% of torch.mm "
                                                     f"({v['achieved_gflops']:.1f} of {v['mm_peak_gflops']:.1f} GFLOP/s)"
                                                     for k, v in mfu.items()))
    return 0


EPOCH_FLAGS = {"so3": ["--group", "so3", "--widths", "48,96,192", "--max-freq", "2"],
               "o2": ["--group", "o2", "--widths", "32,64,128"]}
#: the shipped models' training recipes (README, "Shipped models"): the plain ones plus their levers; only refs
#: that have those flags (balanced sampler, ppf edge features, random-fps sampling; so3 since 2026-12-04 also
#: residual blocks and k = 16, `--depth` from c265324 on; results written before then timed so3 without them)
_SHIPPED = ["--balance", "sampler", "--edge-features", "ppf", "--sampling", "random-fps"]
EPOCH_FLAGS.update({"so3-shipped": EPOCH_FLAGS["so3"] + ["--rotate", "so3", "--eval-rotate", "so3", "--depth", "1,2,2",
                                                         "--k", "16"] + _SHIPPED,
                    "o2-shipped": EPOCH_FLAGS["o2"] + ["--rotate", "z"] + _SHIPPED})


def lever_rounds(args, rounds: int, repeats: int, tree: str) -> dict:
    """What the shipped models' levers (:data:`LEVERS`: point-pair edge features, farthest-point sampling
    of the deeper layers) cost per step, on this tree: each recipe plain and with the levers, a fresh
    process each, the order rotated every round; ratio = median over rounds of lever step / plain step."""
    import statistics

    rows, ratios = [], {}
    for rnd in range(rounds):
        for recipe in RECIPES:
            names = [None, *LEVERS]
            names = names[rnd % len(names):] + names[:rnd % len(names)]
            got = {}
            for lever in names:
                spec = dict(recipe=recipe, lever=lever, batch=4 if args.quick else 16, repeats=repeats,
                            threads=args.threads)
                r = run_recipe(spec, tree, args.threads)
                if "error" in r:
                    print(f"  {recipe} {lever}: FAILED {r['error']}", flush=True)
                    continue
                r.update(round=rnd, variant=f"{recipe} {lever or '(plain)'}")
                print(f"  levers round {rnd} {r['variant']}: train step {r['train_s']:.3f} s  eval {r['eval_s']:.3f} s",
                      flush=True)
                rows.append(r)
                got[lever] = r
            for lever in LEVERS:
                if lever in got and None in got:
                    ratios.setdefault(f"{recipe} {lever}", []).append(
                        (got[lever]["train_s"] / got[None]["train_s"], got[lever]["eval_s"] / got[None]["eval_s"]))
    cost = {k: (statistics.median(t for t, _ in v), statistics.median(e for _, e in v)) for k, v in ratios.items()}
    md = ("### Cost of the shipped models' levers (this tree)\n\nEach recipe plain, with point-pair edge features "
          "(`--edge-features ppf`) and also with `--sampling random-fps` (the shipped models' settings); fresh "
          "process each, order rotated per round, best of the steps.\n\n"
          + C.table(rows, [("round", "round"), ("variant", "variant"), ("train_s", "train step s"),
                           ("eval_s", "eval forward s")])
          + "\n\n| variant | train step / plain | eval / plain |\n|---|---|---|\n"
          + "\n".join(f"| {k} | {v[0]:.2f}x | {v[1]:.2f}x |" for k, v in cost.items()))
    return {"rows": rows, "cost": cost, "markdown": md}


def epoch_rounds(args, trees: dict, sha: str) -> dict:
    """The issue's measurement: one full training epoch of each shipped recipe with the CLI
    (``pcsym train --data D <recipe> --epochs 1 --points 1024 --threads T``), ``shapes_per_second`` from
    metrics.csv (training steps and the norm re-estimation; validation excluded), old and new
    alternating; headline = median over rounds of new/old."""
    import csv
    import os
    import statistics
    import subprocess
    import tempfile

    rows, ratios = [], {}
    recipes = {name: EPOCH_FLAGS[name] for name in args.epoch_recipes.split(",")}
    for rnd in range(args.epoch_rounds):
        for recipe, flags in recipes.items():
            got = {}
            for which in (("ref", "new") if rnd % 2 == 0 else ("new", "ref")):
                with tempfile.TemporaryDirectory() as tmp:
                    env = dict(os.environ, PYTHONPATH=trees[which], PYTHONWARNINGS="ignore")
                    cmd = [sys.executable, "-m", "pcsym", "train", "--data", str(Path(args.epoch_data).resolve()),
                           *flags, "--epochs", "1", "--points", "1024", "--threads", str(args.threads),
                           "--out", f"{tmp}/run"]
                    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=env, timeout=3600)
                    metrics = Path(tmp) / "run" / "metrics.csv"
                    if proc.returncode or not metrics.exists():
                        print(f"  epoch {recipe} {which}: FAILED {(proc.stderr or proc.stdout).strip()[-300:]}",
                              flush=True)
                        continue
                    row = next(csv.DictReader(metrics.open()))
                r = {"round": rnd, "recipe": recipe, "tree": which, "shapes_per_second": float(row["shapes_per_second"]),
                     "epoch_seconds": float(row["epoch_seconds"])}
                print(f"  epoch round {rnd} {recipe:4s} {which}: {r['shapes_per_second']:.1f} shapes/s "
                      f"({r['epoch_seconds']:.0f} s)", flush=True)
                rows.append(r)
                got[which] = r
            if len(got) == 2:
                ratios.setdefault(recipe, []).append(got["new"]["shapes_per_second"] / got["ref"]["shapes_per_second"])
    speed = {k: statistics.median(v) for k, v in ratios.items()}
    headline = f"train speed-up vs {args.baseline}: " + ", ".join(f"{k} {v:.2f}x" for k, v in speed.items()) + \
        " (one full epoch, shapes/s)"
    md = ("### One full training epoch (`pcsym train --data " + str(args.epoch_data) + " <recipe> --epochs 1 "
          f"--points 1024 --threads {args.threads}`)\n\nshapes/s = `shapes_per_second` of metrics.csv (training "
          "steps + norm re-estimation, validation excluded); old and new alternate.\n\n"
          + C.table(rows, [("round", "round"), ("recipe", "recipe"), ("tree", "tree"),
                           ("shapes_per_second", "shapes/s"), ("epoch_seconds", "epoch s")])
          + "\n\n" + " ".join(f"{k}: {v:.2f}x." for k, v in speed.items())
          + "\n\nRecipes: " + "; ".join(f"{k} = `{' '.join(v)}`" for k, v in recipes.items()) + ".")
    return {"rows": rows, "speedup": speed, "headline": headline, "markdown": md, "baseline_sha": sha}


# ----------------------------------------------------------------------------- driver


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=C.argparse.SUPPRESS)
    p.add_argument("--skip-throughput", action="store_true", help="only the scaling part")
    p.add_argument("--skip-scaling", action="store_true", help="only the throughput part")
    p.add_argument("--baseline", metavar="REF", help="time the shipped recipes against git ref REF instead")
    p.add_argument("--rounds", type=int, default=3, help="--baseline: alternating old/new rounds (default 3)")
    p.add_argument("--profile", action="store_true", help="--baseline: add a torch.profiler breakdown")
    p.add_argument("--epoch-data", metavar="DIR", help="--baseline: also time one full training epoch of each "
                   "recipe with `pcsym train` on this dataset (the headline then reports the epoch ratio)")
    p.add_argument("--levers", action="store_true", help="--baseline: also time the shipped models' levers "
                   "(ppf edge features, random-fps sampling) against the plain recipes, on this tree")
    p.add_argument("--epoch-rounds", type=int, default=1, help="--epoch-data: alternating old/new rounds (default 1)")
    p.add_argument("--epoch-recipes", default="so3,o2", help="--epoch-data: comma-separated recipes of "
                   f"{', '.join(EPOCH_FLAGS)} (default so3,o2, the issue's; the -shipped ones need a ref that has "
                   "their flags)")
    p.add_argument("--recipe-worker", help=C.argparse.SUPPRESS)
    p.add_argument("--groups", help=f"throughput: comma-separated groups (default {','.join(GROUPS)}; --quick: o2,m,trivial)")
    p.add_argument("--kernels", default=",".join(KERNELS), help="throughput: comma-separated kernels (default "
                   "implicit,basis; kernels besides implicit run at the implicit model's parameter count)")
    args = p.parse_args()
    unknown = set(args.epoch_recipes.split(",")) - set(EPOCH_FLAGS)
    if unknown:
        p.error(f"--epoch-recipes: unknown {', '.join(sorted(unknown))} (choose from {', '.join(EPOCH_FLAGS)})")
    if args.recipe_worker:
        spec = json.loads(args.recipe_worker)
        try:
            C.emit_result(recipe_worker(spec))
        except Exception as exc:  # noqa: BLE001
            C.emit_result({"recipe": spec["recipe"], "error": repr(exc)[:300]})
        return 0
    if args.baseline:
        return baseline_main(args)
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
    if args.groups:
        tp["groups"] = [g for g in args.groups.split(",") if g]
    tp["kernels"] = [kk for kk in args.kernels.split(",") if kk]
    env = C.environment(args.threads, quick, args.idle)
    print(f"bench_model: {args.threads} thread(s){' [QUICK]' if quick else ''}", flush=True)
    if env["contention_note"]:
        print("warning: " + env["contention_note"], flush=True)
    me = __spec__.name

    def run(specs):  # one process for all in --quick, else a fresh process per configuration
        if quick:
            return C.run_workers(me, specs, args.threads)
        return [C.run_workers(me, [s], args.threads)[0] for s in specs]

    # --- 1. throughput per group
    tp_rows = []
    if not args.skip_throughput:
        specs = [dict(group=g, kernel=kk, batch=tp["batch"], points=tp["points"], k=tp["k"], repeats=tp["repeats"],
                      mode="throughput") for g in tp["groups"] for kk in tp["kernels"]]
        for spec, r in zip(specs, run(specs)):
            r.setdefault("kernel", spec["kernel"])
            if "error" in r:
                print(f"  {r.get('group')} {spec['kernel']}: FAILED {r['error']}", flush=True)
            else:
                print(f"  {r['group']:8s} {r['kernel']:8s} train {r['train_shapes_per_s']:7.1f} shapes/s  "
                      f"infer {r['infer_shapes_per_s']:7.1f} shapes/s  peak +{r['train_peak_mb']:.0f} MiB  "
                      f"params {r['params']:,} widths {tuple(r['widths'])}", flush=True)
            tp_rows.append(r)
        implicit = {r["group"]: r for r in tp_rows if r["kernel"] == "implicit" and "error" not in r}
        for r in tp_rows:
            ref = implicit.get(r["group"])
            if ref and "error" not in r:
                r["train_vs_implicit"] = r["train_shapes_per_s"] / ref["train_shapes_per_s"]
                r["infer_vs_implicit"] = r["infer_shapes_per_s"] / ref["infer_shapes_per_s"]
                r["params_vs_implicit"] = r["params"] / ref["params"]
    tp_cols = [("group", "group"), ("kernel", "kernel"), ("widths", "widths"), ("params", "params"),
               ("train_s", "train step s (median)"), ("train_shapes_per_s", "train shapes/s"),
               ("infer_s", "inference batch s"), ("infer_shapes_per_s", "inference shapes/s"),
               ("train_peak_mb", "train peak +MiB"), ("params_vs_implicit", "params / implicit"),
               ("train_vs_implicit", "train speed / implicit"), ("infer_vs_implicit", "inference speed / implicit")]
    basis_ratios = [r["train_vs_implicit"] for r in tp_rows if r["kernel"] == "basis" and "train_vs_implicit" in r]
    basis_line = (f"basis kernel at matched parameters: min train speed / implicit {min(basis_ratios):.2f} "
                  f"(target >= 0.33) over {len(basis_ratios)} group(s)") if basis_ratios else None

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
        "Kernels other than implicit: the same classifier with its widths scaled (bisection, "
        "`groups_report.search_widths`) to the implicit model's parameter count. "
        "Train = forward + cross-entropy backward + AdamW step (train mode, random sampling order); inference = "
        "eval mode under no_grad. Medians of repeats after one warm-up; synthetic ellipsoid clouds with exact "
        "normals. *train peak +MiB* = peak resident memory during the training steps minus resident memory "
        "before them, fresh process per group.",
        C.table(tp_rows, tp_cols) if tp_rows else "(skipped)",
    ] + ([f"**{basis_line}**"] if basis_line else []) + [
        f"## Scaling ({SCALING_GROUP}, batch {sc['batch']}, one forward + backward, no optimizer step)\n\n"
        "*edges/shape* counts query points x neighbours over all blocks (strides 2, 4, 4, 1; the last "
        "blocks clamp k to the points available). Exponents are least-squares slopes of log-log fits over all "
        "rows (N sweep and k sweep together) unless named otherwise.",
        C.table(sc_rows, sc_cols) if sc_rows else "(skipped)",
        fit_lines or "(no fit)",
        f"**{headline}**",
    ])
    data = {"benchmark": "model", "env": env, "throughput_setup": tp, "scaling_setup": sc,
            "throughput": tp_rows, "scaling": sc_rows, "fit": fit, "headline": headline, "basis_headline": basis_line}
    jp, mp = C.write_results(args.out, "bench_model", data, md, quick)
    print()
    if tp_rows:
        print(C.table(tp_rows, tp_cols) + "\n")
    if sc_rows:
        print(C.table(sc_rows, sc_cols) + "\n")
    print(fit_lines)
    C.print_written(jp, mp, headline, basis_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
