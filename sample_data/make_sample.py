"""Rebuild sample_data/modelnet10_mini from the ModelNet10 h5 train split (30 shapes per class,
seeded). Usage: python sample_data/make_sample.py ../shared/data/modelnet10_hdf5_1024"""
import sys
from pathlib import Path

import h5py
import numpy as np

src = Path(sys.argv[1])
dst = Path(__file__).parent / "modelnet10_mini"
dst.mkdir(exist_ok=True)
with h5py.File(src / "ply_data_train0.h5", "r") as f:
    data, label = f["data"][:], f["label"][:].reshape(-1)
rng = np.random.default_rng(0)
keep = np.sort(np.concatenate([rng.choice(np.nonzero(label == c)[0], 30, replace=False) for c in np.unique(label)]))
with h5py.File(dst / "ply_data_train0.h5", "w") as f:
    f.create_dataset("data", data=data[keep], compression="gzip", compression_opts=4)
    f.create_dataset("label", data=label[keep].reshape(-1, 1).astype(np.uint8), compression="gzip", compression_opts=4)
(dst / "shape_names.txt").write_text((src / "shape_names.txt").read_text())
# the public release lists paths relative to its parent folder; readers resolve by file name
(dst / "train_files.txt").write_text("data/modelnet10_mini/ply_data_train0.h5\n")
print(f"{len(keep)} shapes -> {dst}")
