"""Copy a trained run's best checkpoint into the package as a shipped model (+ its numpy export,
which `pcsym classify` runs without importing torch).

Usage: python scripts/ship_model.py RUN_DIR_OR_CKPT NAME   e.g.  python scripts/ship_model.py runs/o2 o2
Only for checkpoints you trained yourself: it loads with weights_only=False to convert checkpoints
written before numpy scalars were sanitised, then re-saves a weights_only-safe file. A checkpoint
written before models recorded ``estimated_normals`` gets it from its training data (which must exist).
"""
import sys
from pathlib import Path

import torch

from pcsym.config import ModelConfig
from pcsym.data.datasets import load_dataset
from pcsym.inference.export import export_model
from pcsym.models.checkpoint import PRETRAINED_DIR, _state_to_plain, load_model, save_checkpoint


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1].splitlines()[0], file=sys.stderr)
        return 2
    run, name = Path(argv[0]), argv[1]
    src = run / "best.pt" if run.is_dir() else run
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    ckpt = _state_to_plain(ckpt)
    if "estimated_normals" not in ckpt["model_config"]:  # trained before the field existed: ask its training data
        tc, mc = ckpt["train_config"], ckpt["model_config"]
        data = load_dataset(tc["data"], points=mc["points"], up_axis=tc.get("up_axis"), fmt=tc.get("data_format"))
        mc["estimated_normals"] = data.estimated_normals
    dest = PRETRAINED_DIR / f"{name}.pt"
    tmp = dest.with_name(f"{name}.shipping.pt")
    torch.save(ckpt, tmp)  # plain again; now rebuild through the normal loader
    model, _ = load_model(tmp)
    keep = {k: ckpt[k] for k in ("epoch", "best_val_acc", "history", "train_config", "val_accuracy", "unknown_threshold",
                                 "unknown", "members", "unknown_calibration", "kept_classes_of") if k in ckpt}  # ensembles, cut models
    save_checkpoint(dest, model, ModelConfig.from_dict(ckpt["model_config"]), keep)
    tmp.unlink()
    export_model(model, dest.with_suffix(".npz"), "numpy", ckpt.get("unknown_threshold"), ckpt.get("unknown"))
    what = (f"an ensemble of {len(ckpt['members'])}" if ckpt.get("members") else
            f"epoch {ckpt.get('epoch', 0) + 1}, val acc {ckpt.get('best_val_acc')}")
    print(f"shipped {dest} (+ .npz): {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
