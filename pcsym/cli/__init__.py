"""pcsym command-line interface (Typer). Heavy imports (torch, escnn, open3d) happen inside
commands so ``pcsym --help`` stays instant. Input errors print one line on stderr and exit 2."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .. import __version__
from ..errors import PcsymError

# Plain click help and usage errors (rich_markup_mode=None): Typer's rich formatter imports rich's
# markdown stack on every --help or bad flag, which alone takes longer than the 0.3 s help budget.
app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Symmetry-aware point-cloud classification with implicit steerable kernels.")
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Prepare, cache and fetch datasets.")
app.add_typer(data_app, name="data")

STATE = {"debug": False, "quiet": False}
UP_AXIS_OPTION = typer.Option(None, "--up-axis", help="Up axis of the data: z or y (y is rotated to z).")
FORMAT_OPTION = typer.Option(None, "--format", help="h5, normal_resampled or off (default: detect).")
SAMPLE_DATA = Path(__file__).resolve().parents[2] / "sample_data"


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _fail(exc: BaseException, code: int = 2):
    if STATE["debug"]:
        raise exc
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _run(fn):
    """Run a command body: PcsymError -> one line + exit 2; anything else -> one line + exit 1."""
    try:
        return fn()
    except typer.Exit:
        raise
    except PcsymError as exc:
        _fail(exc, exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)
    except MemoryError:
        _fail(PcsymError("out of memory: try fewer --points or a smaller --batch-size"))
    except Exception as exc:  # unexpected: still no traceback unless --debug
        if STATE["debug"]:
            raise
        typer.echo(f"error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                   "(run with --debug for the traceback)", err=True)
        raise typer.Exit(1)


def _setup_torch(threads: int, device: str) -> str:
    import torch

    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise PcsymError("--device cuda requested but no CUDA GPU is available (use --device cpu or auto)")
    if device not in ("cpu", "cuda"):
        raise PcsymError(f"unknown --device '{device}': use auto, cpu or cuda")
    return device


def _version_cb(value: bool):
    if value:
        typer.echo(f"pcsym {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version_cb, is_eager=True,
                                       help="Print the version and exit."),
          debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks on errors."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="Less output (no progress bars).")):
    STATE["debug"], STATE["quiet"] = debug, quiet
    if not debug:
        import warnings

        warnings.filterwarnings("ignore")


# ----------------------------------------------------------------------------- groups


@app.command()
def groups(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List the supported symmetry groups (z is up)."""
    from ..groups import GROUPS

    rows = [{"name": s.name, "description": s.description, "escnn": f"escnn.gspaces.{s.constructor}",
             "order": "continuous" if s.continuous else s.order,
             "default_max_freq": s.default_max_freq if s.continuous else None} for s in GROUPS.values()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    t = Table(title="Symmetry groups (subgroups of O(3); z is up, x/y horizontal)")
    for col in ("name", "what it is", "escnn constructor", "order", "band limit"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["description"], r["escnn"], str(r["order"]),
                  "-" if r["default_max_freq"] is None else str(r["default_max_freq"]))
    _console().print(t)


# ----------------------------------------------------------------------------- train


@app.command()
def train(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="Dataset directory (h5, normal_resampled or OFF layout) or cache .npz."),
    out: Path = typer.Option(Path("runs/latest"), "--out", help="Output directory for checkpoints and metrics."),
    up_axis: Optional[str] = UP_AXIS_OPTION,
    fmt: Optional[str] = FORMAT_OPTION,
    group: str = typer.Option("o2", "--group", help="Symmetry group (see `pcsym groups`)."),
    kernel: str = typer.Option("implicit", "--kernel", help="implicit (MLP kernel) or basis (escnn R3PointConv)."),
    k: int = typer.Option(10, "--k", help="Neighbours per layer."),
    points: int = typer.Option(1024, "--points", help="Points per cloud."),
    epochs: int = typer.Option(30, "--epochs"),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(2e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    rotate: str = typer.Option("z", "--rotate", help="Training augmentation: none, z or so3."),
    widths: str = typer.Option("32,64,128", "--widths", help="Approx. feature dims of the steerable layers."),
    sampling: str = typer.Option("random", "--sampling", help="Downsampling: random or fps."),
    max_freq: Optional[int] = typer.Option(None, "--max-freq",
                                           help="Band limit of hidden fields of continuous groups "
                                                "(default: the group's, see `pcsym groups`)."),
    positions: bool = typer.Option(True, "--positions/--no-positions",
                                   help="Feed centred positions as an input vector field."),
    max_steps: int = typer.Option(0, "--max-steps", help="Cap steps per epoch (0 = full epochs)."),
    weight_decay: float = typer.Option(1e-4, "--weight-decay", help="AdamW weight decay."),
    schedule: str = typer.Option("cosine", "--schedule", help="Learning-rate schedule: cosine or step."),
    label_smoothing: float = typer.Option(0.1, "--label-smoothing"),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Held-out part of the train split."),
    jitter: float = typer.Option(0.01, "--jitter", help="Std of Gaussian point jitter (0 = off)."),
    scale: str = typer.Option("0.8,1.2", "--scale", help="Range of random isotropic scaling (1,1 = off)."),
    anisotropic_scale: bool = typer.Option(False, "--anisotropic-scale",
                                           help="Scale axes independently (breaks rotation symmetry)."),
    point_dropout: float = typer.Option(0.0, "--point-dropout", help="Max fraction of points dropped."),
    eval_rotate: str = typer.Option("z", "--eval-rotate", help="Rotation of validation clouds: none, z or so3."),
    bn_batches: int = typer.Option(32, "--bn-batches",
                                   help="Batches used to re-estimate batch-norm statistics after each epoch."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/TOML file of defaults; flags override it."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from last.pt."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out."),
    device: str = typer.Option("cpu", "--device", help="auto, cpu or cuda."),
    threads: int = typer.Option(0, "--threads", help="CPU threads (0 = torch default)."),
    workers: int = typer.Option(0, "--workers", help="Data-loading worker processes."),
):
    """Train an equivariant classifier."""

    def body():
        from ..config import ModelConfig
        from ..engine import TrainConfig

        file_cfg = _read_config_file(config) if config else {}
        flags = {name: value for name, value in ctx.params.items()
                 if ctx.get_parameter_source(name).name != "DEFAULT"}
        merged = dict(ctx.params)
        merged.pop("config", None)
        for key, value in file_cfg.items():
            if key not in merged:
                raise PcsymError(f"unknown setting '{key}' in config file", path=config)
            if key not in flags:
                merged[key] = value
        if merged["resume"]:  # the run's own settings, unless a flag or the config file says otherwise
            for key, value in _saved_run_settings(Path(merged["out"]), merged).items():
                if key not in flags and key not in file_cfg:
                    merged[key] = value
        dev = _setup_torch(int(merged["threads"]), str(merged["device"]))
        try:
            wid = tuple(int(x) for x in str(merged["widths"]).split(","))
        except ValueError:
            raise PcsymError(f"--widths must be comma-separated integers, got '{merged['widths']}'") from None
        try:
            scale_low, scale_high = (float(x) for x in str(merged["scale"]).split(","))
        except ValueError:
            raise PcsymError(f"--scale must be two numbers LOW,HIGH, got '{merged['scale']}'") from None
        strides = (2, 4, 4, 4, 4)[: len(wid)]
        mcfg = ModelConfig(group=merged["group"], kernel=merged["kernel"], k=int(merged["k"]),
                           points=int(merged["points"]), widths=wid, strides=strides, sampling=merged["sampling"],
                           use_positions=bool(merged["positions"]),
                           max_freq=None if merged["max_freq"] is None else int(merged["max_freq"]),
                           class_names=["?"]).validate()
        tcfg = TrainConfig(data=str(merged["data"]), out=str(merged["out"]), up_axis=merged["up_axis"],
                           data_format=merged["fmt"], epochs=int(merged["epochs"]),
                           batch_size=int(merged["batch_size"]), lr=float(merged["lr"]), seed=int(merged["seed"]),
                           rotate=merged["rotate"], device=dev, threads=int(merged["threads"]),
                           workers=int(merged["workers"]), max_steps=int(merged["max_steps"]),
                           weight_decay=float(merged["weight_decay"]), schedule=merged["schedule"],
                           label_smoothing=float(merged["label_smoothing"]),
                           val_fraction=float(merged["val_fraction"]), jitter=float(merged["jitter"]),
                           scale_low=scale_low, scale_high=scale_high,
                           anisotropic_scale=bool(merged["anisotropic_scale"]),
                           point_dropout=float(merged["point_dropout"]), eval_rotate=merged["eval_rotate"],
                           bn_batches=int(merged["bn_batches"])).validate()
        outdir = Path(tcfg.out)
        if outdir.exists() and not outdir.is_dir():
            raise PcsymError("--out exists and is not a directory", path=outdir)
        if outdir.exists() and any(outdir.iterdir()) and not (merged["resume"] or merged["force"]):
            raise PcsymError("output directory is not empty; pass --resume to continue it or --force to "
                             "overwrite", path=outdir)
        _train_with_progress(mcfg, tcfg, bool(merged["resume"]))

    _run(body)


def _saved_run_settings(out: Path, names) -> dict:
    """The settings of the run in ``out`` (its config.json) under the train command's parameter
    ``names``, for ``train --resume``. Where to read and the machine (data, out, device, threads) are
    not taken from the run."""
    import json

    path = out / "config.json"
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text())
        m, t = saved["model"], saved["train"]
    except (ValueError, KeyError, TypeError):
        raise PcsymError("unreadable run config; resume with explicit flags or start anew with --force",
                         path=path) from None
    d = {**m, **t}  # the two configs share no field names
    if "widths" in d:
        d["widths"] = ",".join(str(w) for w in d["widths"])
    renamed = {"use_positions": "positions", "data_format": "fmt"}
    d = {renamed.get(k, k): v for k, v in d.items()}
    if "scale_low" in d and "scale_high" in d:
        d["scale"] = f"{d['scale_low']},{d['scale_high']}"
    return {k: v for k, v in d.items() if k in names and k not in ("data", "out", "device", "threads")}


def _read_config_file(path: Path) -> dict:
    if not path.exists():
        raise PcsymError("config file not found", path=path)
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            d = tomllib.loads(text)
        else:
            import yaml

            d = yaml.safe_load(text) or {}
    except Exception as exc:
        raise PcsymError(f"could not parse config file ({str(exc).splitlines()[0]})", path=path) from None
    if not isinstance(d, dict):
        raise PcsymError("config file must be a mapping of setting: value", path=path)
    return {str(k).replace("-", "_"): v for k, v in d.items()}


def _train_with_progress(mcfg, tcfg, resume: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..engine import train as run_train

    con = _console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=con, disable=STATE["quiet"], transient=False) as prog:
        task = {"id": None, "epoch": 0}

        def on_step(step, total, loss, acc):
            if task["id"] is None:
                task["id"] = prog.add_task(f"epoch {task['epoch'] + 1}/{tcfg.epochs}", total=total, stats="")
            prog.update(task["id"], completed=step, stats=f"loss {loss:.3f} acc {acc:.3f}")

        def on_epoch(row):
            if task["id"] is not None:
                prog.update(task["id"], stats=f"loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} "
                                              f"val {row['val_acc']:.3f}")
            task["id"] = None
            task["epoch"] = row["epoch"]

        summary = run_train(mcfg, tcfg, resume=resume, on_epoch=on_epoch, on_step=on_step)
    if summary["interrupted"]:
        typer.echo(f"interrupted: state saved in {tcfg.out}/last.pt; continue with "
                   f"`pcsym train --data {tcfg.data} --out {tcfg.out} --resume`", err=True)
        raise typer.Exit(130)
    _console().print(f"best val accuracy {summary['best_val_acc']:.4f}; checkpoints in {tcfg.out}/ "
                     f"(best.pt, last.pt, metrics.csv)")


# ----------------------------------------------------------------------------- evaluate


@app.command()
def evaluate(
    checkpoint: str = typer.Argument(..., help="Checkpoint .pt, run directory, or shipped model name (so3, o2)."),
    data: Path = typer.Option(..., "--data", help="Dataset directory or cache .npz."),
    up_axis: Optional[str] = UP_AXIS_OPTION,
    fmt: Optional[str] = FORMAT_OPTION,
    split: str = typer.Option("val", "--split", help="val (the held-out 20% of train), test, train or all."),
    rotate: str = typer.Option("none", "--rotate", help="Test-time rotation: none, z or so3."),
    votes: int = typer.Option(1, "--votes", help="Average predictions over N augmented copies."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/val split (as in training)."),
    batch_size: int = typer.Option(32, "--batch-size"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write metrics.json, confusion.csv and confusion.png here."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    device: str = typer.Option("cpu", "--device"),
    threads: int = typer.Option(0, "--threads"),
):
    """Overall / mean-class accuracy, per-class table and confusion matrix."""

    def body():
        import numpy as np

        from ..data import PointCloudDataset, load_dataset, train_val_split
        from ..engine import evaluate_model, load_model

        if rotate not in ("none", "z", "so3"):
            raise PcsymError(f"unknown --rotate '{rotate}': use none, z or so3")
        if split not in ("val", "test", "train", "all"):
            raise PcsymError(f"unknown --split '{split}': use val, test, train or all")
        dev = _setup_torch(threads, device)
        model, _ = load_model(checkpoint, dev)
        cfg = model.cfg
        ds_all = load_dataset(data, points=cfg.points, up_axis=up_axis, fmt=fmt)
        if list(ds_all.class_names) != list(cfg.class_names):
            raise PcsymError(f"dataset classes ({len(ds_all.class_names)}) differ from the model's "
                             f"({len(cfg.class_names)})", path=data)
        sp = np.asarray(ds_all.split)
        if split in ("val", "train"):
            pool = np.nonzero(sp == "train")[0] if (sp == "train").any() else np.arange(len(sp))
            tr, va = train_val_split(np.asarray(ds_all.labels)[pool], 0.2, seed)
            idx = pool[va] if split == "val" else pool[tr]
        elif split == "test":
            idx = np.nonzero(sp == "test")[0]
            if len(idx) == 0:
                raise PcsymError("the dataset has no test split (use --split val)", path=data)
        else:
            idx = np.arange(len(sp))
        ds = PointCloudDataset(ds_all, idx, points=cfg.points, rotate=rotate, resample=False, seed=seed + 7919)
        m = evaluate_model(model, ds, batch_size=batch_size, device=dev, votes=votes)
        m.update({"checkpoint": str(checkpoint), "rotate": rotate, "split": split, "votes": votes})
        if out:
            _write_eval_outputs(out, m)
        if as_json:
            typer.echo(json.dumps(m, indent=2))
            return
        _print_eval(m)

    _run(body)


def _write_eval_outputs(out: Path, m: dict):
    import csv
    import io

    from ..errors import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "metrics.json", json.dumps(m, indent=2).encode())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["true\\pred"] + m["class_names"])
    for name, row in zip(m["class_names"], m["confusion_matrix"]):
        w.writerow([name] + row)
    atomic_write_bytes(out / "confusion.csv", buf.getvalue().encode())
    from ..plots import confusion_matrix_png

    confusion_matrix_png(m["confusion_matrix"], m["class_names"], out / "confusion.png",
                         f"OA {m['overall_accuracy']:.3f}, rotate={m['rotate']}")


def _print_eval(m: dict):
    from rich.table import Table

    con = _console()
    con.print(f"[bold]overall accuracy[/] {m['overall_accuracy']:.4f}   [bold]mean class accuracy[/] "
              f"{m['mean_class_accuracy']:.4f}   (n={m['n']}, split={m['split']}, rotate={m['rotate']}, "
              f"votes={m['votes']})")
    t = Table(title="per-class accuracy")
    t.add_column("class")
    t.add_column("accuracy", justify="right")
    t.add_column("n", justify="right")
    for name, acc in m["per_class_accuracy"].items():
        t.add_row(name, "-" if acc is None else f"{acc:.3f}", str(m["support"][name]))
    con.print(t)
    cm = Table(title="confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    short = [n[:6] for n in m["class_names"]]
    for s in short:
        cm.add_column(s, justify="right")
    for s, row in zip(short, m["confusion_matrix"]):
        cm.add_row(s, *[str(v) for v in row])
    con.print(cm)


# ----------------------------------------------------------------------------- classify


@app.command()
def classify(
    inputs: List[Path] = typer.Argument(..., help="Mesh/cloud files (obj, off, ply, stl, xyz, txt, npy) or directories."),
    model: str = typer.Option("so3", "--model", help="Shipped model name (so3, o2) or checkpoint path."),
    top_k: int = typer.Option(5, "--top-k", help="How many classes to show."),
    votes: int = typer.Option(1, "--votes", help="Average over N seeded downsamplings (1-8)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the surface sampling."),
    max_vertices: int = typer.Option(2_000_000, "--max-vertices", help="Refuse larger inputs."),
    up_axis: Optional[str] = UP_AXIS_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    threads: int = typer.Option(0, "--threads"),
):
    """Classify meshes or point clouds; prints the top-k classes with probabilities."""

    def body():
        import numpy as np

        from ..meshes import SUPPORTED_EXTENSIONS, Y_UP_TO_Z_UP, load_cloud

        if top_k < 1:
            raise PcsymError("--top-k must be at least 1")
        from ..runtime import VOTE_ORDERS

        if not 1 <= votes <= VOTE_ORDERS:
            raise PcsymError(f"--votes must be between 1 and {VOTE_ORDERS}")
        if up_axis not in (None, "y", "z"):
            raise PcsymError(f"unknown --up-axis '{up_axis}': use y or z")
        up = np.asarray(Y_UP_TO_Z_UP, dtype=np.float32) if up_axis == "y" else np.eye(3, dtype=np.float32)
        files = _expand_inputs(inputs, SUPPORTED_EXTENSIONS)
        net = _load_classifier(model, threads)
        names = net.cfg.class_names
        results = []
        for f in files:
            try:
                pts, nrm = load_cloud(f, n_points=net.cfg.points, rng=np.random.default_rng(seed),
                                      max_vertices=max_vertices)
                pts, nrm = pts @ up.T, nrm @ up.T
                probs = _probabilities(net, pts, nrm, votes)
                top = np.argsort(-probs, kind="stable")[:top_k]
                results.append({"file": str(f), "ok": True, "top": [
                    {"class": names[int(i)], "probability": round(float(probs[i]), 4)} for i in top]})
            except PcsymError as exc:
                results.append({"file": str(f), "ok": False, "error": str(exc)})
        if as_json:
            typer.echo(json.dumps({"model": str(model), "results": results}, indent=2))
        else:
            _print_classify(results)
        failed = [r for r in results if not r["ok"]]
        for r in failed:
            typer.echo(f"error: {r['error']}", err=True)
        if failed:
            raise typer.Exit(2)

    _run(body)


def _expand_inputs(inputs: List[Path], exts) -> list[Path]:
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in exts)
            if not found:
                raise PcsymError(f"directory contains no supported files ({', '.join(sorted(exts))})", path=p)
            files += found
        else:
            files.append(p)
    return files


def _load_classifier(name_or_path: str, threads: int = 0):
    """A classifier for ``classify``: numpy exports (``.npz``, and the shipped models, which ship one)
    run without importing torch — a much faster cold start; ``.ts`` files load as TorchScript;
    anything else is a checkpoint rebuilt with escnn."""
    from ..config import PRETRAINED, resolve_checkpoint

    p = resolve_checkpoint(name_or_path)
    fast = p.with_suffix(".npz") if str(name_or_path) in PRETRAINED else p
    if fast.suffix == ".npz" and fast.exists():
        from ..runtime import NumpyClassifier

        return NumpyClassifier(fast)
    _setup_torch(threads, "cpu")
    if p.suffix == ".ts":
        from ..export import ScriptedClassifier

        return ScriptedClassifier(p)
    from ..engine import load_model

    return load_model(p)[0]


def _probabilities(net, pts, nrm, votes: int = 1):
    """Class probabilities (C,) of one cloud (N, 3) with its normals, as a numpy array, averaged over
    ``votes`` seeded downsampling orders (those of ``evaluate --votes``; one for fps models)."""
    import numpy as np

    from ..runtime import NumpyClassifier, softmax

    if isinstance(net, NumpyClassifier):
        return np.mean([softmax(net(pts[None], nrm[None], vote=v))[0] for v in range(votes)], axis=0)
    import torch

    from ..export import ScriptedClassifier
    from ..graph import vote_order

    p, n = torch.as_tensor(pts)[None], torch.as_tensor(nrm)[None]
    random = net.cfg.sampling == "random"
    probs = []
    with torch.no_grad():
        for v in range(votes if random else 1):
            if isinstance(net, ScriptedClassifier):
                logits = net(p, n, vote=v)
            else:  # a checkpoint's model; farthest-point models compute their own order
                logits = net(p, n, order=vote_order(v, 1, p.shape[1]) if random else None)
            probs.append(torch.softmax(logits, -1)[0].numpy())
    return np.mean(probs, axis=0)


def _print_classify(results):
    from rich.table import Table

    con = _console()
    for r in results:
        if not r["ok"]:
            con.print(f"[red]{r['file']}: failed[/]")
            continue
        t = Table(title=r["file"])
        t.add_column("#", justify="right")
        t.add_column("class")
        t.add_column("probability", justify="right")
        for i, c in enumerate(r["top"], 1):
            t.add_row(str(i), c["class"], f"{c['probability']:.4f}")
        con.print(t)


# ----------------------------------------------------------------------------- check-equivariance


@app.command("check-equivariance")
def check_equivariance(
    checkpoint: Optional[str] = typer.Argument(None, help="Checkpoint or shipped model name; omit with --group."),
    group: Optional[str] = typer.Option(None, "--group", help="Check a freshly initialised model of this group."),
    kernel: str = typer.Option("implicit", "--kernel", help="Kernel of the fresh model: implicit or basis."),
    input: Optional[Path] = typer.Option(None, "--input", help="Mesh/cloud to test on (default: a shipped sample)."),
    points: int = typer.Option(512, "--points", help="Points of the test cloud for a fresh model."),
    n_random: int = typer.Option(3, "--random", help="Random group elements besides the generators."),
    tol: float = typer.Option(1e-4, "--tol", help="Fail (exit 1) if an in-group relative error exceeds this."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """Measure invariance of logits and equivariance of every steerable layer (float64)."""

    def body():
        import numpy as np
        import torch

        from ..config import ModelConfig
        from ..engine import load_model
        from ..equivariance import check_model
        from ..meshes import load_cloud
        from ..models.classifier import build_model

        if (checkpoint is None) == (group is None):
            raise PcsymError("give either a checkpoint or --group NAME")
        if checkpoint is not None:
            net, _ = load_model(checkpoint)
            n = net.cfg.points
        else:
            torch.manual_seed(seed)
            net = build_model(ModelConfig(group=group, kernel=kernel, points=points,
                                          class_names=[f"c{i}" for i in range(10)]))
            n = points
        src = input or _default_sample()
        pts, nrm = load_cloud(src, n_points=n, rng=np.random.default_rng(seed))
        rows = check_model(net, torch.as_tensor(pts), torch.as_tensor(nrm), n_random=n_random, seed=seed)
        bad = [r for r in rows if r.in_group and r.worst_rel > tol]
        if as_json:
            typer.echo(json.dumps({"group": net.cfg.group, "kernel": net.cfg.kernel, "tol": tol, "passed": not bad,
                                   "rows": [r.__dict__ | {"worst_rel": r.worst_rel} for r in rows]}, indent=2))
        else:
            _print_check(net.cfg, rows, tol, src)
        if bad:
            raise typer.Exit(1)

    _run(body)


def _default_sample() -> Path:
    for cand in sorted((SAMPLE_DATA / "meshes").glob("*")) if (SAMPLE_DATA / "meshes").exists() else []:
        return cand
    raise PcsymError("no shipped sample mesh found; pass --input FILE")


def _print_check(cfg, rows, tol, src):
    from rich.table import Table

    con = _console()
    layer_names = list(next((r.layers for r in rows if r.in_group), {}).keys())
    t = Table(title=f"equivariance of a {cfg.group}/{cfg.kernel} model on {Path(src).name} (float64; "
                    "layer columns: relative max error of ρ_out(g)·f(x) vs f(g·x))")
    t.add_column("element")
    t.add_column("in G")
    t.add_column("logits abs", justify="right")
    t.add_column("logits rel", justify="right")
    for n in layer_names:
        t.add_column(n, justify="right")
    t.add_column("verdict")
    for r in rows:
        if r.in_group:
            verdict = "[green]ok[/]" if r.worst_rel <= tol else "[red]FAIL[/]"
        else:
            verdict = "[yellow]changes[/]" if r.logits_rel > tol else "same"
        t.add_row(r.element, "yes" if r.in_group else "no", f"{r.logits_abs:.1e}", f"{r.logits_rel:.1e}",
                  *[f"{r.layers[n]:.1e}" if n in r.layers else "" for n in layer_names], verdict)
    con.print(t)
    worst = max((r.worst_rel for r in rows if r.in_group), default=0.0)
    con.print(f"worst in-group relative error {worst:.2e} (tol {tol:g}): {'PASS' if worst <= tol else 'FAIL'}")


# ----------------------------------------------------------------------------- export


@app.command()
def export(
    checkpoint: str = typer.Argument(..., help="Checkpoint .pt, run directory, or shipped model name."),
    fmt: str = typer.Option("torchscript", "--format", help="torchscript, onnx or numpy."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output file (default: next to the checkpoint)."),
):
    """Export to TorchScript, ONNX or numpy: runs with plain torch / onnxruntime / numpy, same logits."""

    def body():
        from ..engine import load_model, resolve_checkpoint
        from ..export import EXPORT_FORMATS, SUFFIXES, export_model

        if fmt not in EXPORT_FORMATS:
            raise PcsymError(f"unknown --format '{fmt}': use {', '.join(EXPORT_FORMATS)}")
        model, _ = load_model(checkpoint)
        target = out or resolve_checkpoint(checkpoint).with_suffix(SUFFIXES[fmt])
        export_model(model, target, fmt)
        _console().print(f"exported {fmt}: {target}")

    _run(body)


# ----------------------------------------------------------------------------- data


@data_app.command("prepare")
def data_prepare(
    src: Path = typer.Argument(..., help="Dataset directory in any supported layout."),
    out: Optional[Path] = typer.Option(None, "--out", help="Cache file (.npz); default: inside SRC or ~/.cache/pcsym."),
    points: int = typer.Option(1024, "--points"),
    up_axis: Optional[str] = UP_AXIS_OPTION,
    fmt: Optional[str] = FORMAT_OPTION,
):
    """Convert a dataset once into a fast cached array file."""

    def body():
        from ..data import prepare

        if up_axis not in (None, "y", "z"):
            raise PcsymError(f"unknown --up-axis '{up_axis}': use y or z")
        path = prepare(src, out=out, points=points, up_axis=up_axis or "z", fmt=fmt)
        _console().print(f"cache written: {path}")

    _run(body)


@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="Dataset name (see --list) or a URL."),
    out: Path = typer.Option(Path("data"), "--out", help="Where to download and extract."),
    url: Optional[str] = typer.Option(None, "--url", help="Mirror URL for a known dataset."),
    sha256: Optional[str] = typer.Option(None, "--sha256", help="Expected SHA-256 of the archive."),
    no_extract: bool = typer.Option(False, "--no-extract", help="Only download the archive."),
):
    """Download a public ModelNet release (resumable, checksum-verified, safely extracted)."""

    def body():
        from ..fetch import fetch

        path = fetch(name, out, url=url, sha256=sha256, progress=not STATE["quiet"], extract=not no_extract)
        _console().print(f"ready: {path}")

    _run(body)


def main():
    app()
