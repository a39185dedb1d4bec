"""Shared helpers of the pcsym benchmarks: argument parsing, timing, peak-memory probes, fresh-process
workers and result writing (JSON + markdown table). Only the standard library and torch are used."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"


# ----------------------------------------------------------------------------- command line


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats (< 1 min); results go to <name>_quick.*")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    p.add_argument("--idle", metavar="HOW", help="certify in the results that nothing else ran meanwhile, and how "
                   "that was ensured (the load average is recorded either way)")
    return p


def set_threads(n: int) -> None:
    """Pin torch (and BLAS/OpenMP, for child processes) to n threads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (interop threads can only be set once, before any parallel work)
        pass


def quiet_warnings() -> None:
    import warnings

    warnings.filterwarnings("ignore")


# ----------------------------------------------------------------------------- timing


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def time_repeats(fn: Callable[[], object], repeats: int, warmup: int = 1, min_total_s: float = 0.0,
                 max_repeats: int = 1000) -> list[float]:
    """Wall times (s) of ``fn()`` after ``warmup`` untimed calls; keeps repeating past ``repeats``
    until ``min_total_s`` seconds have been timed (for very fast functions), up to ``max_repeats``."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_total_s and len(times) < max_repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def loglog_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit log y = a log x + b; returns (a, b)."""
    lx = [math.log(v) for v in x]
    ly = [math.log(v) for v in y]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    sxy = sum((a - mx) * (b - my) for a, b in zip(lx, ly))
    slope = sxy / sxx
    return slope, my - slope * mx


# ----------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_mb() -> float:
    """Current resident set size of this process (MiB)."""
    return _status_kb("VmRSS") / 1024.0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0). False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size (MiB) since process start or the last :func:`reset_peak_rss`."""
    return _status_kb("VmHWM") / 1024.0


class PeakMemory:
    """Context manager measuring the peak extra resident memory (MiB) of the enclosed code:
    ``VmHWM`` at exit minus ``VmRSS`` at entry, after resetting the high-water mark at entry.

    This counts everything the process really touches (torch's CPU allocator hands large blocks back
    to the OS, so freed tensors do not linger), including allocator slack, and is only honest in a
    fresh process per configuration (otherwise memory freed by earlier configurations is reused)."""

    def __enter__(self):
        import gc

        gc.collect()
        self.ok = reset_peak_rss()
        self.start = rss_mb()
        return self

    def __exit__(self, *exc):
        self.peak = peak_rss_mb()
        self.delta = max(0.0, self.peak - self.start) if self.ok else float("nan")
        return False


# ----------------------------------------------------------------------------- fresh-process workers


def run_workers(module: str, specs: list[dict], threads: int, timeout: float = 1800.0) -> list[dict]:
    """Run ``python -m module --worker JSON --threads N`` (from the repository root) in one fresh interpreter
    for the list ``specs``; the worker
    prints one line ``RESULT {json}`` per spec (see :func:`emit_result`). Returns one dict per spec, in
    order; configurations without a result get ``{"error": ...}``."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONWARNINGS"] = "ignore"
    cmd = [sys.executable, "-m", module, "--worker", json.dumps(specs), "--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(REPO), env=env)
        out, why = proc.stdout, f"worker exited {proc.returncode}: " + " | ".join(
            (proc.stderr or "").strip().splitlines()[-3:])
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        why = f"worker timed out after {timeout:.0f}s"
    results = [json.loads(l[len("RESULT "):]) for l in out.splitlines() if l.startswith("RESULT ")]
    return results + [{"error": why} for _ in range(len(specs) - len(results))]


def emit_result(result: dict) -> None:
    """Worker side of :func:`run_workers`."""
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------------------- environment + output


def competing_processes() -> list[str]:
    """Command lines of other running ``pcsym ... train`` processes (CPU contention during the run)."""
    try:
        out = subprocess.run(["pgrep", "-af", "pcsym -q train"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    me = str(os.getpid())
    return [l for l in out.splitlines() if l.strip() and not l.startswith(me + " ") and "pgrep" not in l]


def environment(threads: int, quick: bool, idle: str | None = None) -> dict:
    """The run's environment. ``idle``: how the caller made sure nothing else ran (``--idle``); the
    machine's load is recorded at the start and, by :func:`env_markdown`, at the end either way."""
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import escnn

        escnn_v = getattr(escnn, "__version__", "?")
    except Exception:  # noqa: BLE001
        escnn_v = None
    try:
        import pcsym

        pcsym_v = pcsym.__version__
    except Exception:  # noqa: BLE001
        pcsym_v = None
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=str(REPO)).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "pcsym"], capture_output=True, text=True,
                                cwd=str(REPO)).stdout.strip())
    comp = competing_processes()
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "quick": quick,
        "threads": threads,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "escnn": escnn_v,
        "pcsym": pcsym_v,
        "git": git + ("+dirty" if dirty else ""),
        "competing_train_processes": len(comp),
        "load_avg_1min_at_start": round(load1, 2),
        "idle_note": idle or "",
        "contention_note": (f"{len(comp)} `pcsym -q train` process(es) were running during this benchmark: "
                            "timings are pessimistic") if comp else "",
    }


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if v != 0 and (abs(v) < 10 ** -(digits - 1) or abs(v) >= 1e6):
            return f"{v:.2e}"
        return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:.0f}"
    return str(v)


def table(rows: Iterable[dict], columns: Sequence[tuple[str, str]]) -> str:
    """Markdown table of ``rows`` with ``columns`` = [(key, header), ...]."""
    rows = list(rows)
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep] + body)


def run_parameters(run: Path) -> int | None:
    """Parameter count of a pcsym run's model (rebuilt from its best.pt's config); None without one."""
    ckpt = Path(run) / "best.pt"
    if not ckpt.exists():
        return None
    from pcsym.models.checkpoint import read_checkpoint
    from pcsym.config import ModelConfig
    from pcsym.models.classifier import build_model, count_parameters

    return count_parameters(build_model(ModelConfig.from_dict(read_checkpoint(ckpt)["model_config"])))


def write_results(out_dir: Path, name: str, data: dict, markdown: str, quick: bool) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` (``<name>_quick.*`` for --quick runs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_quick" if quick else name
    jp, mp = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    jp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    mp.write_text(markdown.rstrip() + "\n")
    return jp, mp


def out_prefix(text: str | Path) -> Path:
    """A benchmark's ``--out PREFIX`` (its files are PREFIX.json, PREFIX.md, ...): a trailing .json or .md is
    dropped, any other dot is part of the name (``runs/so3_oe0.1`` writes ``runs/so3_oe0.1.md``)."""
    p = Path(text)
    return p.with_suffix("") if p.suffix in (".json", ".md") else p


def beside(prefix: Path, suffix: str) -> Path:
    """``PREFIX`` + ``suffix``, without ``Path.with_suffix``'s reading of a dot in the name as a suffix."""
    return prefix.with_name(prefix.name + suffix)


def print_written(json_path: Path, md_path: Path, *lines: str | None) -> None:
    """The closing lines of a benchmark: where its results went, then its headline(s) (empty ones skipped)."""
    print(f"\nwrote {json_path} and {md_path}")
    for line in lines:
        if line:
            print(line)


def env_markdown(env: dict) -> str:
    lines = [f"- date (UTC): {env['date_utc']}; git {env['git']}; {'QUICK run' if env['quick'] else 'full run'}",
             f"- CPU: {env['cpu']} ({env['cpu_count']} logical cores), torch threads: {env['threads']}",
             f"- python {env['python']}, torch {env['torch']}, escnn {env['escnn']}, pcsym {env['pcsym']}"]
    if env.get("contention_note"):
        lines.append(f"- **contention:** {env['contention_note']}")
    if hasattr(os, "getloadavg"):  # the markdown is written when the run ends
        env["load_avg_1min_at_end"] = round(os.getloadavg()[0], 2)
    if "load_avg_1min_at_start" in env:
        lines.append(f"- machine load (1-min average) when the run started: {env['load_avg_1min_at_start']}; "
                     f"{'at the end (its own processes included): ' + str(env['load_avg_1min_at_end']) + '; ' if 'load_avg_1min_at_end' in env else ''}"
                     f"{'**idle machine**: nothing else ran (' + env['idle_note'] + ')' if env.get('idle_note') else '**not certified idle**: other work may have shared the cores'}")
    return "\n".join(lines)



def env_markdown_shared_process(env: dict) -> str:
    """env_markdown plus the caveat of --quick runs, which measure everything in one process."""
    note = "\n- quick run: all configurations share one process, memory figures are only indicative"
    return env_markdown(env) + (note if env["quick"] else "")


def split_label(test_data: str | None) -> str:
    """How tables name the scored shapes: test-dev (a folder named *testdev*: the development half of the
    official test split, where choices are made), test, or the runs' own validation split."""
    if not test_data:
        return "validation"
    return "test-dev" if "testdev" in Path(test_data).name.replace("-", "").replace("_", "") else "test"
