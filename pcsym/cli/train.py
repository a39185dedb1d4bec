"""``pcsym train``: parameter names are the config field names (pcsym.config), defaults come from
the configs themselves, and ``merge_settings`` combines them with --config and --resume."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..config import (BALANCES, DEVICES, EDGE_FEATURES, FRAMES, KERNELS, OPTIMIZERS, ROTATIONS, SAMPLINGS, SCHEDULES,
                      SELECT_METRICS, ModelConfig, TrainConfig)
from ..errors import PcsymError
from .common import (BALANCE, DATA_FORMAT, DEVICE, EDGE_FEATURE, FRAME, KERNEL, OPTIMIZER, ROTATION, SAMPLING, SCHEDULE,
                     SELECT, UP_AXIS, app, check_dataset, choice, console, debug_option, format_option, integer,
                     number, options, quiet_option, run, setup_torch, up_axis_option)

_M, _T = ModelConfig(), TrainConfig()


def _csv(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


@app.command()
def train(
    ctx: typer.Context,
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset directory (h5, normal_resampled or OFF layout) or "
                                                             "cache .npz (with --resume: the run's unless given)."),
    out: Path = typer.Option(Path(_T.out), "--out", help="Output directory for checkpoints and metrics."),
    up_axis: Optional[UP_AXIS] = up_axis_option(),
    data_format: Optional[DATA_FORMAT] = format_option(),
    group: str = typer.Option(_M.group, "--group", help="Symmetry group (see `pcsym groups`)."),
    kernel: KERNEL = typer.Option(
        _M.kernel, "--kernel", parser=choice("--kernel", KERNELS), help="implicit (MLP kernel) or basis (escnn "
                                                                         "R3PointConv)."),
    k: int = typer.Option(_M.k, "--k", parser=integer("--k", 1),
                          help="Neighbours per layer (with --init: the model's unless given)."),
    points: int = typer.Option(_M.points, "--points", parser=integer("--points", 1), help="Points per cloud."),
    epochs: int = typer.Option(_T.epochs, "--epochs", parser=integer("--epochs", 1),
                               help="Epochs of the run (with --resume: raise it to continue a finished run)."),
    batch_size: int = typer.Option(_T.batch_size, "--batch-size", parser=integer("--batch-size", 1),
                                   help="Global batch: split evenly across the processes of a torchrun job."),
    lr: float = typer.Option(_T.lr, "--lr", parser=number("--lr", 0, low_open=True),
                             help="Peak learning rate (after one warm-up epoch; see --schedule)."),
    seed: int = typer.Option(_T.seed, "--seed", parser=integer("--seed", 0),
                             help="Seed of the weights, the augmentations and the train/validation split."),
    rotate: ROTATION = typer.Option(_T.rotate, "--rotate", parser=choice("--rotate", ROTATIONS),
                                    help="Training augmentation: random rotations about z, in SO(3), or none."),
    widths: str = typer.Option(_csv(_M.widths), "--widths", help="Approx. feature dims of the steerable layers."),
    sampling: SAMPLING = typer.Option(_M.sampling, "--sampling", parser=choice("--sampling", SAMPLINGS),
                                      help="Downsampling (random-fps: random first layer, farthest-point deeper "
                                           "layers; with --init: the model's unless given)."),
    max_freq: Optional[int] = typer.Option(_M.max_freq, "--max-freq", parser=integer("--max-freq", 0, 4),
                                           help="Band limit of hidden fields of continuous groups, 0-4 "
                                                "(default: the group's, see `pcsym groups`)."),
    use_positions: bool = typer.Option(_M.use_positions, "--positions/--no-positions",
                                       help="Feed centred positions as an input vector field."),
    max_steps: int = typer.Option(_T.max_steps, "--max-steps", parser=integer("--max-steps", 0),
                                  help="Cap steps per epoch (0 = full epochs)."),
    weight_decay: float = typer.Option(_T.weight_decay, "--weight-decay", parser=number("--weight-decay", 0),
                                       help="Weight decay (decoupled for AdamW)."),
    schedule: SCHEDULE = typer.Option(_T.schedule, "--schedule", parser=choice("--schedule", SCHEDULES),
                                                       help="Learning-rate schedule after the warm-up."),
    label_smoothing: float = typer.Option(_T.label_smoothing, "--label-smoothing",
                                          parser=number("--label-smoothing", 0, 1, high_open=True),
                                          help="Label smoothing of the cross-entropy loss, in [0, 1)."),
    val_fraction: float = typer.Option(_T.val_fraction, "--val-fraction",
                                       parser=number("--val-fraction", 0, 1, low_open=True, high_open=True),
                                       help="Held-out part of the train split."),
    train_fraction: float = typer.Option(_T.train_fraction, "--train-fraction",
                                         parser=number("--train-fraction", 0, 1, low_open=True),
                                         help="Part of the training shapes used, stratified and seeded (learning "
                                              "curves; the validation shapes stay the same)."),
    jitter: float = typer.Option(_T.jitter, "--jitter", parser=number("--jitter", 0),
                                 help="Std of Gaussian point jitter (0 = off)."),
    scale: str = typer.Option(_csv(_T.scale), "--scale", help="Range of random isotropic scaling (1,1 = off)."),
    anisotropic_scale: bool = typer.Option(_T.anisotropic_scale, "--anisotropic-scale",
                                           help="Scale axes independently (breaks rotation symmetry)."),
    point_dropout: float = typer.Option(_T.point_dropout, "--point-dropout",
                                        parser=number("--point-dropout", 0, 1, high_open=True),
                                        help="Max fraction of points dropped, in [0, 1)."),
    eval_rotate: ROTATION = typer.Option(_T.eval_rotate, "--eval-rotate", parser=choice("--eval-rotate", ROTATIONS),
                                         help="Rotation of validation clouds."),
    bn_batches: int = typer.Option(_T.bn_batches, "--bn-batches", parser=integer("--bn-batches", 0),
                                   help="Batches used to re-estimate batch-norm statistics after each epoch."),
    select: SELECT = typer.Option(
        _T.select, "--select", parser=choice("--select", SELECT_METRICS),
        help="What picks best.pt: mean class accuracy (tracks a balanced test split), OA (favours the big "
             "classes) or the last epoch (for a validation split too small to pick one)."),
    edge_features: EDGE_FEATURE = typer.Option(
        _M.edge_features, "--edge-features", parser=choice("--edge-features", EDGE_FEATURES),
        help="ppf feeds the point-pair invariants n_i.n_j, n_i.d, n_j.d of every edge to the kernel MLP (needs "
             "normals); ppf+normals also the normals n_i, n_j as vectors; ppf-unsigned |n_i.n_j|, |n_i.d|, |n_j.d| "
             "and their product, blind to the normals' signs."),
    frames: FRAME = typer.Option(
        _M.frames, "--frames", parser=choice("--frames", FRAMES),
        help="pca: see every cloud through the six views of its PCA frame (one drawn per training shape, all six "
             "averaged in evaluation), which makes a model on a group with every rotation about z (so2, o2) "
             "invariant to all rotations."),
    depth: str = typer.Option(_csv(_M.depth), "--depth", help="Steerable blocks per stage (one value, or one per "
                                                             "stage): the first downsamples, the others are "
                                                             "residual blocks on the stage's points."),
    balance: BALANCE = typer.Option(
        _T.balance, "--balance", parser=choice("--balance", BALANCES),
        help="Class-weighted loss or class-balanced sampling of the training split."),
    ema: float = typer.Option(_T.ema, "--ema", parser=number("--ema", 0, 1, high_open=True),
                              help="Validate and save a moving average of the weights with this decay per step "
                                   "(0 = off; e.g. 0.999)."),
    mix: float = typer.Option(_T.mix, "--mix", parser=number("--mix", 0, 1),
                              help="Probability that a training shape gets a ball of another shape's points, with "
                                   "a soft target (point CutMix; 0 = off)."),
    outlier_exposure: float = typer.Option(_T.outlier_exposure, "--outlier-exposure",
                                           parser=number("--outlier-exposure", 0, 100),
                                           help="Weight of an energy term that teaches the \"unknown\" score: "
                                                "training shapes above a margin, made-up outliers (shapes half of "
                                                "one class, half of another) below one (0 = off; e.g. 0.1)."),
    optimizer: OPTIMIZER = typer.Option(_T.optimizer, "--optimizer",
                                                      parser=choice("--optimizer", OPTIMIZERS),
                                                      help="AdamW, or SGD with momentum 0.9."),
    init: Optional[str] = typer.Option(None, "--init", help="Fine-tune: start from this model's equivariant trunk "
                                                            "(shipped name so3/o2, checkpoint or run folder) with a "
                                                            "new head for this dataset's classes (its own head when "
                                                            "the classes are the same); the model settings come from "
                                                            "it. An ensemble (so3, o2): its first member."),
    freeze_trunk: bool = typer.Option(False, "--freeze-trunk", help="With --init: train only the head."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/TOML file of defaults; flags override it."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from last.pt, with its settings "
                                                        "(a different model setting is refused; other changes are "
                                                        "reported and recorded in config.json)."),
    force: bool = typer.Option(False, "--force", help="Start anew in a non-empty --out, replacing its files."),
    device: DEVICE = typer.Option(_T.device, "--device", parser=choice("--device", DEVICES),
                                  help="Where to train (auto: a CUDA GPU when there is one)."),
    threads: int = typer.Option(_T.threads, "--threads", parser=integer("--threads", 0),
                                help="CPU threads (0 = torch default)."),
    shards: int = typer.Option(_T.shards, "--shards", parser=integer("--shards", 0),
                               help="Split each batch into N shards trained side by side on one thread each, same "
                                    "maths (0 = one per CPU thread; 1 = the whole batch on all threads)."),
    workers: int = typer.Option(_T.workers, "--workers", parser=integer("--workers", 0),
                                help="Data-loading worker processes."),
    _quiet: bool = quiet_option(),
    _debug: bool = debug_option(),
):
    """Train an equivariant classifier."""

    def body():
        from ..config import flag_name, merge_settings, model_notes, show_value

        explicit = {name for name in ctx.params if ctx.get_parameter_source(name).name != "DEFAULT"}
        aliases = {opt.lstrip("-").split("/")[0].replace("-", "_"): p.name for p in ctx.command.params
                   for opt in p.opts}  # a config file may spell a setting as its flag
        outdir = Path(out)
        if resume and force:
            raise PcsymError("--resume continues the run in --out, --force starts it anew: give one of them")
        if outdir.exists() and not outdir.is_dir():
            raise PcsymError("--out exists and is not a directory", path=outdir)
        if resume and not (outdir / "last.pt").exists():
            raise PcsymError("nothing to resume: no last.pt (start the run without --resume)", path=outdir)
        if outdir.exists() and any(outdir.iterdir()) and not (resume or force):
            raise PcsymError("output directory is not empty; pass --resume to continue it or --force to "
                             "overwrite", path=outdir)
        changes: list = []
        mcfg, tcfg = merge_settings(ctx.params, explicit, config, resume, aliases, _model_config_of, changes)
        check_dataset(tcfg.data)
        if resume:
            _refuse_finished(outdir, tcfg.epochs)
        for c in changes:
            typer.echo(f"note: {flag_name(c['setting'])} {show_value(c['to'])} differs from the run's "
                       f"{show_value(c['from'])}; continuing with {show_value(c['to'])} (recorded in "
                       f"{outdir / 'config.json'})", err=True)
        for note in model_notes(mcfg):
            typer.echo(f"note: {note}", err=True)
        tcfg.device = setup_torch(tcfg.threads, tcfg.device)
        _train_with_progress(mcfg, tcfg, resume, options(ctx).quiet, changes)

    run(body, ctx)


def finished_epochs(out: Path) -> int:
    """Epochs a run folder records as finished (rows of metrics.csv, written after last.pt: never more
    than last.pt holds)."""
    path = Path(out) / "metrics.csv"
    if not path.exists():
        return 0
    return max(0, len([ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]) - 1)


def _refuse_finished(out: Path, epochs: int) -> None:
    """Resuming a run that already has --epochs epochs: say so (exit 0, nothing to do); fewer: exit 2."""
    from ..config import complete_message

    done = finished_epochs(out)
    if done > epochs:
        raise PcsymError(f"--epochs {epochs} is fewer than the {done} epochs the run has finished; raise --epochs "
                         "to continue it", path=out)
    if done == epochs:
        typer.echo(complete_message(done, epochs), err=True)
        raise typer.Exit(0)


def _model_config_of(checkpoint: str) -> dict:
    from ..models.checkpoint import read_checkpoint

    return read_checkpoint(checkpoint)["model_config"]  # an ensemble's: its members' (pcsym.training.parts)


def _train_with_progress(mcfg, tcfg, resume: bool, quiet: bool, changes: list):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..config import complete_message
    from ..training.train import train as run_train

    main = int(os.environ.get("RANK", "0")) == 0  # in a torchrun job only rank 0 reports
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console(stderr=True), disable=quiet or not main, transient=False) as prog:
        task = {"id": None, "epoch": 0}

        def on_epoch_start(epoch):  # 0-based: a resumed run goes on at its own epoch number
            task["id"], task["epoch"] = None, epoch

        def on_step(step, total, loss, acc):
            if task["id"] is None:
                task["id"] = prog.add_task(f"epoch {task['epoch'] + 1}/{tcfg.epochs}", total=total, stats="")
            prog.update(task["id"], completed=step, stats=f"loss {loss:.3f} acc {acc:.3f}")

        def on_epoch(row):
            if task["id"] is not None:
                prog.update(task["id"], stats=f"loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} "
                                              f"val {row['val_acc']:.3f} mAcc {row['val_macc']:.3f}")
            task["id"] = None

        summary = run_train(mcfg, tcfg, resume=resume, on_epoch=on_epoch, on_step=on_step,
                            on_epoch_start=on_epoch_start, changes=changes)
    if not main:
        raise typer.Exit(130 if summary["interrupted"] else 0)
    if summary["interrupted"]:
        typer.echo(f"interrupted: state saved in {tcfg.out}/last.pt; continue with "
                   f"`pcsym train --out {tcfg.out} --resume`", err=True)
        raise typer.Exit(130)
    if summary.get("complete"):
        typer.echo(complete_message(summary["epochs_done"], tcfg.epochs), err=True)
        return
    what = {"macc": "best val mean class accuracy", "oa": "best val accuracy",
            "last": "last epoch's val mean class accuracy"}[summary["select"]]
    console().print(f"{what} {summary['best_val_acc']:.4f}; checkpoints in {tcfg.out}/ "
                    f"(best.pt, last.pt, metrics.csv)")
