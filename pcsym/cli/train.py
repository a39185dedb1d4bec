"""``pcsym train``: parameter names are the config field names (pcsym.config), defaults come from
the configs themselves, and ``merge_settings`` combines them with --config and --resume."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..config import BALANCES, EDGE_FEATURES, OPTIMIZERS, SAMPLINGS, SELECT_METRICS, ModelConfig, TrainConfig
from ..errors import PcsymError
from .common import app, console, format_option, options, run, setup_torch, up_axis_option

_M, _T = ModelConfig(), TrainConfig()


def _csv(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


@app.command()
def train(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="Dataset directory (h5, normal_resampled or OFF layout) or cache .npz."),
    out: Path = typer.Option(Path(_T.out), "--out", help="Output directory for checkpoints and metrics."),
    up_axis: Optional[str] = up_axis_option(),
    data_format: Optional[str] = format_option(),
    group: str = typer.Option(_M.group, "--group", help="Symmetry group (see `pcsym groups`)."),
    kernel: str = typer.Option(_M.kernel, "--kernel", help="implicit (MLP kernel) or basis (escnn R3PointConv)."),
    k: int = typer.Option(_M.k, "--k", help="Neighbours per layer (with --init: the model's unless given)."),
    points: int = typer.Option(_M.points, "--points", help="Points per cloud."),
    epochs: int = typer.Option(_T.epochs, "--epochs"),
    batch_size: int = typer.Option(_T.batch_size, "--batch-size",
                                   help="Global batch: split evenly across the processes of a torchrun job."),
    lr: float = typer.Option(_T.lr, "--lr"),
    seed: int = typer.Option(_T.seed, "--seed"),
    rotate: str = typer.Option(_T.rotate, "--rotate", help="Training augmentation: none, z or so3."),
    widths: str = typer.Option(_csv(_M.widths), "--widths", help="Approx. feature dims of the steerable layers."),
    sampling: str = typer.Option(_M.sampling, "--sampling",
                                 help=f"Downsampling: {', '.join(SAMPLINGS)} (random-fps: random first layer, "
                                      "farthest-point deeper layers; with --init: the model's unless given)."),
    max_freq: Optional[int] = typer.Option(_M.max_freq, "--max-freq",
                                           help="Band limit of hidden fields of continuous groups "
                                                "(default: the group's, see `pcsym groups`)."),
    use_positions: bool = typer.Option(_M.use_positions, "--positions/--no-positions",
                                       help="Feed centred positions as an input vector field."),
    max_steps: int = typer.Option(_T.max_steps, "--max-steps", help="Cap steps per epoch (0 = full epochs)."),
    weight_decay: float = typer.Option(_T.weight_decay, "--weight-decay", help="Weight decay (decoupled for AdamW)."),
    schedule: str = typer.Option(_T.schedule, "--schedule", help="Learning-rate schedule: cosine or step."),
    label_smoothing: float = typer.Option(_T.label_smoothing, "--label-smoothing"),
    val_fraction: float = typer.Option(_T.val_fraction, "--val-fraction", help="Held-out part of the train split."),
    train_fraction: float = typer.Option(_T.train_fraction, "--train-fraction",
                                         help="Part of the training shapes used, stratified and seeded (learning "
                                              "curves; the validation shapes stay the same)."),
    jitter: float = typer.Option(_T.jitter, "--jitter", help="Std of Gaussian point jitter (0 = off)."),
    scale: str = typer.Option(_csv(_T.scale), "--scale", help="Range of random isotropic scaling (1,1 = off)."),
    anisotropic_scale: bool = typer.Option(_T.anisotropic_scale, "--anisotropic-scale",
                                           help="Scale axes independently (breaks rotation symmetry)."),
    point_dropout: float = typer.Option(_T.point_dropout, "--point-dropout", help="Max fraction of points dropped."),
    eval_rotate: str = typer.Option(_T.eval_rotate, "--eval-rotate", help="Rotation of validation clouds: none, z or so3."),
    bn_batches: int = typer.Option(_T.bn_batches, "--bn-batches",
                                   help="Batches used to re-estimate batch-norm statistics after each epoch."),
    select: str = typer.Option(_T.select, "--select",
                               help=f"What picks best.pt: {' or '.join(SELECT_METRICS)} (mean class accuracy tracks a "
                                    "balanced test split; OA favours the big classes; last: the last epoch, for "
                                    "a validation split too small to pick one)."),
    edge_features: str = typer.Option(_M.edge_features, "--edge-features",
                                      help=f"{' or '.join(EDGE_FEATURES)}: ppf feeds the point-pair invariants "
                                           "n_i.n_j, n_i.d, n_j.d of every edge to the kernel MLP (needs normals); "
                                           "ppf+normals also the normals n_i, n_j as vectors."),
    depth: str = typer.Option(_csv(_M.depth), "--depth", help="Steerable blocks per stage (one value, or one per "
                                                             "stage): the first downsamples, the others are "
                                                             "residual blocks on the stage's points."),
    balance: str = typer.Option(_T.balance, "--balance",
                                help=f"{' or '.join(BALANCES)}: class-weighted loss or class-balanced sampling "
                                     "of the training split."),
    ema: float = typer.Option(_T.ema, "--ema", help="Validate and save a moving average of the weights with this "
                                                    "decay per step (0 = off; e.g. 0.999)."),
    mix: float = typer.Option(_T.mix, "--mix", help="Probability that a training shape gets a ball of another "
                                                    "shape's points, with a soft target (point CutMix; 0 = off)."),
    optimizer: str = typer.Option(_T.optimizer, "--optimizer", help=f"{' or '.join(OPTIMIZERS)} (SGD: momentum 0.9)."),
    init: Optional[str] = typer.Option(None, "--init", help="Fine-tune: start from this model's equivariant trunk "
                                                            "(shipped name so3/o2, checkpoint or run folder) with a "
                                                            "new head for this dataset's classes; the model settings "
                                                            "come from it."),
    freeze_trunk: bool = typer.Option(False, "--freeze-trunk", help="With --init: train only the head."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/TOML file of defaults; flags override it."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from last.pt, with its settings."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty --out."),
    device: str = typer.Option(_T.device, "--device", help="auto, cpu or cuda."),
    threads: int = typer.Option(_T.threads, "--threads", help="CPU threads (0 = torch default)."),
    shards: int = typer.Option(_T.shards, "--shards", help="Split each batch into N shards trained side by side on "
                                                          "one thread each, same maths (0 = one per CPU thread; "
                                                          "1 = the whole batch on all threads)."),
    workers: int = typer.Option(_T.workers, "--workers", help="Data-loading worker processes."),
):
    """Train an equivariant classifier."""

    def body():
        from ..config import merge_settings

        explicit = {name for name in ctx.params if ctx.get_parameter_source(name).name != "DEFAULT"}
        aliases = {opt.lstrip("-").split("/")[0].replace("-", "_"): p.name for p in ctx.command.params
                   for opt in p.opts}  # a config file may spell a setting as its flag
        mcfg, tcfg = merge_settings(ctx.params, explicit, config, resume, aliases, _model_config_of)
        tcfg.device = setup_torch(tcfg.threads, tcfg.device)
        outdir = Path(tcfg.out)
        if outdir.exists() and not outdir.is_dir():
            raise PcsymError("--out exists and is not a directory", path=outdir)
        if outdir.exists() and any(outdir.iterdir()) and not (resume or force):
            raise PcsymError("output directory is not empty; pass --resume to continue it or --force to "
                             "overwrite", path=outdir)
        _train_with_progress(mcfg, tcfg, resume, options(ctx).quiet)

    run(body, ctx)


def _model_config_of(checkpoint: str) -> dict:
    from ..models.checkpoint import read_checkpoint

    return read_checkpoint(checkpoint)["model_config"]


def _train_with_progress(mcfg, tcfg, resume: bool, quiet: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..training.train import train as run_train

    main = int(os.environ.get("RANK", "0")) == 0  # in a torchrun job only rank 0 reports
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console(stderr=True), disable=quiet or not main, transient=False) as prog:
        task = {"id": None, "epoch": 0}

        def on_step(step, total, loss, acc):
            if task["id"] is None:
                task["id"] = prog.add_task(f"epoch {task['epoch'] + 1}/{tcfg.epochs}", total=total, stats="")
            prog.update(task["id"], completed=step, stats=f"loss {loss:.3f} acc {acc:.3f}")

        def on_epoch(row):
            if task["id"] is not None:
                prog.update(task["id"], stats=f"loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} "
                                              f"val {row['val_acc']:.3f} mAcc {row['val_macc']:.3f}")
            task["id"] = None
            task["epoch"] = row["epoch"]

        summary = run_train(mcfg, tcfg, resume=resume, on_epoch=on_epoch, on_step=on_step)
    if not main:
        raise typer.Exit(130 if summary["interrupted"] else 0)
    if summary["interrupted"]:
        typer.echo(f"interrupted: state saved in {tcfg.out}/last.pt; continue with "
                   f"`pcsym train --data {tcfg.data} --out {tcfg.out} --resume`", err=True)
        raise typer.Exit(130)
    what = {"macc": "best val mean class accuracy", "oa": "best val accuracy",
            "last": "last epoch's val mean class accuracy"}[summary["select"]]
    console().print(f"{what} {summary['best_val_acc']:.4f}; checkpoints in {tcfg.out}/ "
                    f"(best.pt, last.pt, metrics.csv)")
