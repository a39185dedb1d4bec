"""One steerable point-convolution layer, forward + backward: pcsym's implicit kernel vs pcsym's basis
kernel (escnn's basis through the implicit kernel's contraction, ``pcsym.models.basis``) vs escnn's
``R3PointConv`` used directly (torch_geometric message passing) on the same kNN graph; optionally
(``--methods ...,basis-escnn``) pcsym's previous basis kernel, which calls escnn's basis sampler.

For each group the input field type is the hidden activation type of 16 channels and the output type the
matching pre-activation type (``channel_types(g, 16)`` -> act_reps in, pre_reps out), for all three layers.
Every (group, layer) configuration runs in a fresh Python process, so the peak-memory figure (extra peak
resident memory of the timed phase, see ``_common.PeakMemory``) is not polluted by earlier configurations.

    python -m benchmarks.speed.bench_conv [--quick] [--threads N]
"""

from __future__ import annotations

import json
import sys

from benchmarks import common as C

GROUPS = ["so2", "o2", "so3", "o3", "m", "inv", "f", "trivial"]  # the paper's comparison (Fig. 3)
METHODS = ["implicit", "basis", "escnn"]
LABEL = {"implicit": "pcsym implicit", "basis": "pcsym basis", "basis-escnn": "pcsym basis (escnn sampler)",
         "escnn": "escnn R3PointConv"}
# escnn R3PointConv fwd+bwd, 8x1024 points, k=10, 16 channels, 2 threads (anchor figures from the brief, s)
ANCHOR_S = {"so3": 6.7, "o3": 6.7, "so2": 10.5, "o2": 11.4, "m": 2.1, "inv": 2.0}
# basis of the escnn baseline: the same as pcsym's basis kernel's defaults (ModelConfig.basis_radius, _rings, _cutoff)
BASIS_KW = dict(width=3.0, n_rings=3, frequencies_cutoff=2.0)


# ----------------------------------------------------------------------------- worker (fresh process)


def implicit_flops(conv, b: int, m: int, k: int) -> dict:
    """Analytic FLOPs (multiply-adds x 2) of the matmuls of ImplicitKernelConv.forward and its backward
    with respect to the parameters and the input features (rel needs no gradient)."""
    from pcsym.models.layers import EquivLinear

    e = b * m * k
    emb = 0
    for l in range(1, conv.embed.lmax + 1):
        cob = getattr(conv.embed, f"cob_{l}")
        emb += 2 * e * cob.shape[0] * cob.shape[1]
    lins = [mod for mod in conv.mlp if isinstance(mod, EquivLinear)]
    mlp = [2 * e * lin.in_size * lin.out_size for lin in lins]
    agg = 2 * e * conv.h_size * conv.in_size  # bmm (B*M, H, k) x (B*M, k, C_in)
    contract = 2 * b * m * conv.h_size * conv.in_size * conv.out_size  # (B*M, H*C_in) x (H*C_in, C_out)
    fwd = emb + sum(mlp) + agg + contract
    # backward: d/dW for every layer, d/dX for all but the first MLP layer (its input is the embedding)
    bwd = mlp[0] + 2 * sum(mlp[1:]) + 2 * agg + 2 * contract
    return {"embed": emb, "mlp": sum(mlp), "aggregate_bmm": agg, "contract_mm": contract,
            "forward": fwd, "backward": bwd, "total": fwd + bwd,
            "contract_shape": [b * m, conv.h_size * conv.in_size, conv.out_size]}


def dense_gflops(shape, repeats: int, min_total_s: float) -> float:
    """GFLOP/s of torch.mm (n, p) x (p, q) in float32."""
    import torch

    n, p, q = shape
    a, w = torch.randn(n, p), torch.randn(p, q)
    t = C.median(C.time_repeats(lambda: torch.mm(a, w), repeats, warmup=2, min_total_s=min_total_s))
    return 2.0 * n * p * q / t / 1e9


def worker(spec: dict) -> dict:
    import numpy as np
    import torch

    C.quiet_warnings()
    C.set_threads(spec["threads"])
    from escnn import nn as enn

    from pcsym.geometry.graph import gather, knn
    from pcsym.models.basis import FastBasisKernelConv
    from pcsym.models.groups import quiet_stdout, resolve
    from pcsym.models.layers import (BasisKernelConv, ImplicitKernelConv, channel_types, direct_sum_matrix,
                                     type_size)

    group, method = resolve(spec["group"]), spec["method"]
    b, n, k = spec["batch"], spec["points"], spec["k"]
    torch.manual_seed(0)
    np.random.seed(0)
    pre, act, kind = channel_types(group, spec["channels"])
    c_in, c_out = type_size(act), type_size(pre)
    gs = group.gspace
    if method == "implicit":
        conv = ImplicitKernelConv(group, act, pre)
    elif method in ("basis", "basis-escnn"):
        cls = FastBasisKernelConv if method == "basis" else BasisKernelConv
        conv = cls(group, act, pre, max_radius=BASIS_KW["width"], n_rings=BASIS_KW["n_rings"],
                   frequencies_cutoff=BASIS_KW["frequencies_cutoff"])
    else:
        with quiet_stdout():
            in_type, out_type = enn.FieldType(gs, list(act)), enn.FieldType(gs, list(pre))
            conv = enn.R3PointConv(in_type, out_type, bias=True, initialize=False, **BASIS_KW)
        with torch.no_grad():
            conv.weights.normal_()
    conv.train()
    n_params = sum(p.numel() for p in conv.parameters() if p.requires_grad)

    pos = torch.randn(b, n, 3)
    feat = torch.randn(b, n, c_in, requires_grad=True)
    idx = knn(pos, pos, k)  # the graph shared by all layers (not timed)
    with torch.no_grad():  # invariant length scale, as in pcsym's SteerableBlock
        scale = float((pos[:, :, None] - gather(pos, idx)).norm(dim=-1).mean())
    pos_s = pos / scale
    gout = torch.randn(b, n, c_out)
    src = (idx + torch.arange(b)[:, None, None] * n).reshape(-1)  # neighbour j
    dst = torch.arange(b * n).repeat_interleave(k)  # centre i (source_to_target message passing)
    edge_index = torch.stack([src, dst])

    def forward(p, f):
        if method == "escnn":
            x = enn.GeometricTensor(f.reshape(b * n, c_in), in_type, coords=p.reshape(b * n, 3))
            return conv(x, edge_index).tensor.reshape(b, n, c_out)
        rel = p[:, :, None, :] - gather(p, idx)  # x_i - x_j
        return conv(rel, gather(f, idx))

    def step():
        conv.zero_grad(set_to_none=True)
        feat.grad = None
        (forward(pos_s, feat) * gout).sum().backward()

    def fwd_only():
        with torch.no_grad():
            forward(pos_s, feat)

    reps = spec["repeats"]
    with C.PeakMemory() as mem:
        times = C.time_repeats(step, reps, warmup=1)
    t_fwd = C.median(C.time_repeats(fwd_only, reps, warmup=1))

    # equivariance error, float32, one random group element (a non-identity element of a finite group; the
    # trivial group has only the identity)
    G = gs.fibergroup
    others = [e for e in G.elements if e != G.identity] if G.order() > 0 else []
    g = others[0] if others else (G.identity if G.order() > 0 else G.sample())
    R = torch.tensor(np.asarray(gs.basespace_action(g)), dtype=torch.float32)
    rin = torch.tensor(direct_sum_matrix(act, g), dtype=torch.float32)
    rout = torch.tensor(direct_sum_matrix(pre, g), dtype=torch.float32)
    conv.eval()
    with torch.no_grad():
        expected = forward(pos_s, feat) @ rout.T
        got = forward(pos_s @ R.T, feat @ rin.T)
        equiv = float((got - expected).abs().max() / expected.abs().max())

    res = {"group": spec["group"], "method": method, "kind": kind, "fields_in": len(act), "fields_out": len(pre),
           "c_in": c_in, "c_out": c_out, "params": n_params, "times_s": times, "median_s": C.median(times),
           "forward_s": t_fwd, "peak_mem_mb": mem.delta, "rss_before_mb": mem.start, "equiv_rel_err": equiv}
    if method == "implicit":
        fl = implicit_flops(conv, b, n, k)
        res["flops"] = fl
        res["gflops"] = fl["total"] / res["median_s"] / 1e9
        res["dense_mm_gflops"] = dense_gflops(fl["contract_shape"], 5, spec["mm_min_s"])
        big = spec["square_mm"]
        res["square_mm_gflops"] = dense_gflops([big, big, big], 3, spec["mm_min_s"])
        res["mm_efficiency"] = res["gflops"] / res["dense_mm_gflops"]
        with torch.no_grad():  # structural zeros of the equivariant contraction matrix (still multiplied densely)
            w, _ = conv.dense_weight()
            res["contract_nonzero_frac"] = float((w.abs() > 1e-9).float().mean())
    return res


# ----------------------------------------------------------------------------- driver


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=C.argparse.SUPPRESS)
    p.add_argument("--groups", default=",".join(GROUPS), help="comma-separated groups (default: all eight)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated: implicit,basis,escnn "
                   "(and basis-escnn: pcsym's escnn-sampled basis kernel, as slow as escnn)")
    args = p.parse_args()
    if args.worker:
        specs = json.loads(args.worker)
        for spec in specs if isinstance(specs, list) else [specs]:
            spec["threads"] = args.threads
            try:
                C.emit_result(worker(spec))
            except Exception as exc:  # noqa: BLE001 - report and go on with the next configuration
                C.emit_result({"group": spec["group"], "method": spec["method"], "error": repr(exc)[:300]})
        return 0

    quick = args.quick
    sizes = dict(batch=1, points=512, k=10, channels=16, square_mm=1024, mm_min_s=0.1) if quick else \
        dict(batch=8, points=1024, k=10, channels=16, square_mm=2048, mm_min_s=1.0)
    groups = [g for g in args.groups.split(",") if g]
    methods = [m for m in args.methods.split(",") if m]
    env = C.environment(args.threads, quick, args.idle)
    print(f"bench_conv: {sizes['batch']}x{sizes['points']} points, k={sizes['k']}, {sizes['channels']} channels, "
          f"{args.threads} thread(s){' [QUICK]' if quick else ''}", flush=True)
    if env["contention_note"]:
        print("warning: " + env["contention_note"], flush=True)

    specs = [dict(sizes, group=g, method=m, repeats=2 if quick else (5 if m == "implicit" else 3))
             for g in groups for m in methods]
    if quick:  # one process for everything (memory figures then include reuse of freed memory)
        results = iter(C.run_workers(__spec__.name, specs, args.threads))
    else:  # a fresh process per configuration: honest peak-memory deltas
        results = (C.run_workers(__spec__.name, [s], args.threads)[0] for s in specs)
    rows = []
    for group in groups:
        by = {}
        for method in methods:
            r = next(results)
            if "error" in r:
                print(f"  {group:4s} {LABEL[method]:27s} FAILED: {r['error']}", flush=True)
                r = {"group": group, "method": method, "error": r["error"]}
            else:
                print(f"  {group:4s} {LABEL[method]:27s} {r['median_s']:8.3f} s  peak +{r['peak_mem_mb']:.0f} MiB  "
                      f"equiv {r['equiv_rel_err']:.1e}", flush=True)
            by[method] = r
        ref = by.get("escnn", {}).get("median_s")
        imp = by.get("implicit", {}).get("median_s")
        for method in methods:
            r = by[method]
            r["label"] = LABEL[method]
            r["speedup_vs_escnn"] = (ref / r["median_s"]) if ref and r.get("median_s") else None
            r["speed_vs_implicit"] = (imp / r["median_s"]) if imp and r.get("median_s") else None
            r["anchor_escnn_s"] = ANCHOR_S.get(group) if not quick else None
            rows.append(r)

    speedups = [r["speedup_vs_escnn"] for r in rows if r["method"] == "implicit" and r.get("speedup_vs_escnn")]
    min_speedup = min(speedups) if speedups else None
    basis_rel = [r["speed_vs_implicit"] for r in rows if r["method"] == "basis" and r.get("speed_vs_implicit")]
    basis_esc = [r["speedup_vs_escnn"] for r in rows if r["method"] == "basis" and r.get("speedup_vs_escnn")]
    cols = [("group", "group"), ("label", "layer"), ("c_in", "C in"), ("c_out", "C out"), ("params", "params"),
            ("median_s", "fwd+bwd s (median)"), ("forward_s", "fwd s"), ("speedup_vs_escnn", "speedup vs escnn"),
            ("speed_vs_implicit", "speed vs implicit"), ("peak_mem_mb", "peak +MiB"),
            ("equiv_rel_err", "equiv rel err (f32)")]
    flop_rows = [dict(group=r["group"], gflop=r["flops"]["total"] / 1e9, gflops=r["gflops"],
                      contract=r["flops"]["contract_mm"] / r["flops"]["total"],
                      dense=r["dense_mm_gflops"], nz=r.get("contract_nonzero_frac"), square=r["square_mm_gflops"], eff=r["mm_efficiency"],
                      shape="x".join(map(str, r["flops"]["contract_shape"])))
                 for r in rows if r["method"] == "implicit" and "flops" in r]
    flop_cols = [("group", "group"), ("gflop", "matmul GFLOP (fwd+bwd)"), ("contract", "share in contraction"),
                 ("gflops", "achieved GFLOP/s"), ("shape", "contraction mm shape"), ("nz", "nonzero share of contraction W"),
                 ("dense", "torch.mm same shape GFLOP/s"), ("square", f"torch.mm {sizes['square_mm']}^3 GFLOP/s"),
                 ("eff", "achieved / same-shape mm")]
    headline = f"min speedup vs escnn R3PointConv: {min_speedup:.1f}x" if min_speedup else \
        "min speedup vs escnn R3PointConv: n/a"
    basis_line = (f"pcsym basis: min speed vs implicit {min(basis_rel):.2f}x, min speedup vs escnn "
                  f"{min(basis_esc):.1f}x (same field types; matched parameters: bench_model)"
                  if basis_rel and basis_esc else None)
    md = "\n\n".join([
        "# bench_conv: one steerable point-conv layer, forward + backward",
        C.env_markdown_shared_process(env),
        f"Batch {sizes['batch']} clouds x {sizes['points']} Gaussian random points, k = {sizes['k']} (graph from "
        "`pcsym.geometry.graph.knn`, shared by all layers and not timed). Input type = hidden activation type of "
        f"{sizes['channels']} channels, output type = its pre-activation type (`channel_types(g, {sizes['channels']})`). "
        "Time = median wall time of repeats after one warm-up of: gather neighbours + conv forward + "
        "backward w.r.t. the parameters and the input features (escnn: `R3PointConv` forward via torch_geometric "
        f"message passing, basis {BASIS_KW}; pcsym basis: the same basis and parameters through the implicit "
        "kernel's contraction). *speed vs implicit* = implicit time / this row's time, same field types (the "
        "parameter counts differ: see *params*). *peak +MiB* = peak resident memory (VmHWM, reset before the timed "
        "phase) minus resident memory before it, in a fresh process per row. Equivariance error = "
        "max |f(g.x) - g.f(x)| / max |g.f(x)| for one random group element, float32, eval mode.",
        C.table(rows, cols),
        "## Achieved matmul throughput of the pcsym implicit conv\n\nFLOPs counted analytically (kernel MLP on every "
        "edge, harmonic embedding, the h (x) f aggregation bmm, the contraction matmul; forward + backward). "
        "Dense references are torch.mm timings taken in the same process.",
        C.table(flop_rows, flop_cols),
        "Anchor (escnn R3PointConv fwd+bwd, 8x1024, k=10, 2 threads, from the project brief): "
        + ", ".join(f"{g} {s} s" for g, s in ANCHOR_S.items()),
        f"**{headline}**",
    ] + ([f"**{basis_line}**"] if basis_line else []))
    data = {"benchmark": "conv", "env": env, "sizes": sizes, "basis": BASIS_KW, "rows": rows,
            "min_speedup_vs_escnn": min_speedup, "headline": headline,
            "basis_min_speed_vs_implicit": min(basis_rel) if basis_rel else None, "basis_headline": basis_line}
    jp, mp = C.write_results(args.out, "bench_conv", data, md, quick)
    print()
    print(C.table(rows, cols))
    print()
    print(C.table(flop_rows, flop_cols))
    C.print_written(jp, mp, headline, basis_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
