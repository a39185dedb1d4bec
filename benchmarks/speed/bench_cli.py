"""Wall time of whole ``pcsym`` command-line invocations, each a fresh subprocess (median of 3):

* ``pcsym --help`` (the CLI must stay instant: no torch/escnn import);
* a cold ``pcsym classify sample_data/meshes/bed_0001.off`` (new process: imports, the shipped model's
  numpy export — no torch import —, mesh loading + surface sampling, one forward pass), and as the baseline
  in the same run the same command with ``--model`` the shipped checkpoint (torch import + escnn rebuild).
  "Cold" means a fresh process, not an empty OS page cache or an empty escnn basis cache.

If the shipped model (pcsym/pretrained/) is missing, the classify timing is skipped with a message; pass
``--model PATH`` to time ``classify`` with another checkpoint instead.

``--forward-baseline REF`` adds the shipped model's numpy forward pass (with its "unknown" score), timed in
this process, against the same shipped model at git ref REF (``git show REF:pcsym/pretrained/NAME.npz``),
alternating, median of 7: what a change of the shipped model costs ``classify`` apart from process start-up.
It needs ``--model so3`` or ``o2`` (a checkpoint path is refused, exit 2).

    python -m benchmarks.speed.bench_cli [--quick] [--threads N] [--model so3|PATH] [--forward-baseline REF]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common as C

MESH = C.REPO / "sample_data" / "meshes" / "bed_0001.off"


def pcsym_exe() -> list[str]:
    exe = Path(sys.executable).parent / "pcsym"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("pcsym")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from pcsym.cli import main; sys.argv[0] = 'pcsym'; sys.exit(main())"]


def time_command(cmd: list[str], repeats: int, threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    times, last = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        last = subprocess.run(cmd, capture_output=True, text=True, cwd=str(C.REPO), env=env)
        times.append(time.perf_counter() - t)
        if last.returncode != 0:
            break
    return {"command": " ".join(Path(cmd[0]).name if i == 0 else c for i, c in enumerate(cmd)),
            "times_s": times, "median_s": C.median(times), "returncode": last.returncode,
            "stdout_tail": last.stdout.strip().splitlines()[-12:], "stderr_tail": last.stderr.strip().splitlines()[-3:]}


def shipped_model_path(name: str) -> Path | None:
    """Path of a shipped model name, or None if missing."""
    from pcsym.models.checkpoint import PRETRAINED, resolve_checkpoint
    from pcsym.errors import PcsymError

    if name not in PRETRAINED:
        return None
    try:
        return resolve_checkpoint(name)
    except PcsymError:
        return None


def forward_rows(name: str, ref: str, repeats: int = 7) -> list[dict]:
    """In-process numpy forward pass (+ unknown score) of shipped model ``name`` now and at git ``ref``,
    alternating on the benchmark mesh; rows in :func:`time_command`'s shape."""
    import tempfile

    from pcsym.inference.predict import load_classifier, read_input

    with tempfile.TemporaryDirectory() as tmp:
        old_path = Path(tmp) / f"{name}_{ref}.npz"
        got = subprocess.run(["git", "show", f"{ref}:pcsym/pretrained/{name}.npz"], capture_output=True, cwd=str(C.REPO))
        if got.returncode != 0:
            raise SystemExit(f"error: no pcsym/pretrained/{name}.npz at {ref}: {got.stderr.decode().strip()}")
        old_path.write_bytes(got.stdout)
        models = {"now": load_classifier(name), ref: load_classifier(old_path)}
        pts, nrm = read_input(MESH, models["now"].cfg.points, seed=0, estimated_normals=models["now"].cfg.estimated_normals)
        times = {k: [] for k in models}
        for _ in range(repeats):
            for k, clf in models.items():
                t = time.perf_counter()
                clf.predict(pts, nrm)
                times[k].append(time.perf_counter() - t)
    return [{"name": f"numpy forward, in process, median of {repeats}" + ("" if k == "now" else " (baseline)"),
             "command": f"load_classifier({name!r}{'' if k == 'now' else f' at {ref}'}).predict", "times_s": v,
             "median_s": C.median(v), "returncode": 0} for k, v in times.items()]


def main() -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", default="so3", help="shipped model name or checkpoint path for classify (default so3)")
    p.add_argument("--forward-baseline", metavar="REF", help="also time the shipped model's numpy forward pass "
                   "against the same shipped model at git ref REF")
    args = p.parse_args()
    shipped = args.model in ("so3", "o2")
    if args.forward_baseline and not shipped:
        p.error(f"--forward-baseline times a shipped model (so3 or o2) against itself at REF; "
                f"{args.model!r} is not one")
    repeats = 1 if args.quick else 3
    env = C.environment(args.threads, args.quick, args.idle)
    if env["contention_note"]:
        print("warning: " + env["contention_note"], flush=True)
    exe = pcsym_exe()
    rows = []

    r = time_command(exe + ["--help"], repeats, args.threads)
    r["name"] = "help"
    rows.append(r)
    print(f"  pcsym --help: {r['median_s']:.3f} s (rc {r['returncode']})", flush=True)

    model_path = shipped_model_path(args.model) if shipped else (Path(args.model) if Path(args.model).exists() else None)
    skipped = None
    if model_path is None:
        skipped = (f"shipped model '{args.model}' not found in pcsym/pretrained/" if shipped
                   else f"checkpoint {args.model} not found") + ": classify timing skipped"
        print("  " + skipped, flush=True)
    else:
        base_cmd = exe + ["classify", str(MESH.relative_to(C.REPO)), "--threads", str(args.threads)]
        cmd = base_cmd + ([] if args.model == "so3" else ["--model", args.model])
        r = time_command(cmd, repeats, args.threads)
        r["name"] = "classify cold"
        r["model"] = str(args.model)
        rows.append(r)
        print(f"  pcsym classify: {r['median_s']:.3f} s (rc {r['returncode']})", flush=True)
        if r["returncode"] != 0:
            print("  classify failed: " + " | ".join(r["stderr_tail"]), flush=True)
        if shipped:  # baseline in the same run: the same model through its checkpoint (torch + escnn rebuild)
            b = time_command(base_cmd + ["--model", str(model_path)], repeats, args.threads)
            b["name"] = "classify cold, checkpoint (baseline)"
            rows.append(b)
            print(f"  pcsym classify --model {model_path.name}: {b['median_s']:.3f} s (rc {b['returncode']})",
                  flush=True)

    fw = []
    if args.forward_baseline:
        fw = forward_rows(args.model, args.forward_baseline, 3 if args.quick else 7)
        rows += fw
        print(f"  numpy forward: {1e3 * fw[0]['median_s']:.1f} ms, at {args.forward_baseline}: "
              f"{1e3 * fw[1]['median_s']:.1f} ms", flush=True)

    help_s = rows[0]["median_s"]
    cls = next((x for x in rows if x["name"] == "classify cold"), None)
    cls_txt = (f"{cls['median_s']:.1f}s" + ("" if cls["returncode"] == 0 else " (FAILED)")) if cls else "skipped"
    if cls and not shipped:
        cls_txt += f" (model {Path(args.model).name})"
    base = next((x for x in rows if x["name"] == "classify cold, checkpoint (baseline)"), None)
    if cls and base and cls["returncode"] == 0 and base["returncode"] == 0:
        cls_txt += f" ({base['median_s'] / cls['median_s']:.1f}x faster than from the checkpoint)"
    headline = f"help {help_s:.2f}s, classify cold {cls_txt}"
    if fw:
        headline += (f"; numpy forward {1e3 * fw[0]['median_s']:.0f} ms, {fw[0]['median_s'] / fw[1]['median_s']:.2f}x "
                     f"the {args.model} model at {args.forward_baseline}")
    cols = [("name", "what"), ("command", "command"), ("median_s", f"median s (of {repeats})"),
            ("returncode", "exit code")]
    md = "\n\n".join([
        "# bench_cli: whole-process wall time of pcsym commands",
        C.env_markdown(env),
        "Each command is a fresh subprocess (interpreter start + imports + work); median of repeats. "
        "`classify` is cold in the sense of a new process (the OS page cache and escnn's basis cache are "
        "left as they are).",
        C.table(rows, cols),
        f"Note: {skipped}." if skipped else "",
        f"**{headline}**",
    ])
    data = {"benchmark": "cli", "env": env, "rows": rows, "skipped": skipped, "headline": headline}
    jp, mp = C.write_results(args.out, "bench_cli", data, md, args.quick)
    print()
    print(C.table(rows, cols))
    C.print_written(jp, mp, headline)
    failed = any(x["returncode"] != 0 for x in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
