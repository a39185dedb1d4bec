"""Compare "unknown" scores on one model's features: kNN similarity (k = 1, 5, 20), max probability, energy,
Mahalanobis and relative Mahalanobis (raw and unit features), feature norm; then energy combined with others.

Usage: python -m benchmarks.accuracy.unknown_scores MODEL CACHE.npz [--train D] [--testdev D] [--meshes F]
Computes (once; CACHE.npz is reused) the logits and pooled features of the training shapes (labels for the
class-conditional scores), of the test-dev shapes (evaluation seeds 0-2) and of each mesh (3 surface samples),
then prints, for each score, the meshes flagged (a mesh counts when at least 2 of its 3 samples fall below)
at thresholds keeping 95% / 93% of test-dev seed 0, the share of test-dev seeds 1-2 kept, and each mesh's
percentile among the test-dev scores. An investigation tool behind docs/experiments.md ("unknown: the energy
score"); the shipped detector is measured as classify runs it by benchmarks.accuracy.unknown_report.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.accuracy.unknown_report import mesh_files
from pcsym.inference.runtime import energy as lse, softmax  # the shipped score, as classify computes it


def compute(name: str, cache: Path, train: str, testdev: str, meshes: str) -> None:
    import torch

    from pcsym.data.datasets import load_dataset
    from pcsym.data.transforms import eval_dataset
    from pcsym.inference.predict import read_input
    from pcsym.models.checkpoint import load_model, train_config_of
    from pcsym.training.loader import make_loader

    model, ckpt = load_model(name)
    run = train_config_of(ckpt)
    model.eval()

    def feats(ds):
        L, F, Y = [], [], []
        with torch.no_grad():
            for pos, nrm, y in make_loader(ds, 32, False, 0, 0, 0):
                lg, f = model(pos, nrm, pooled=True)
                L.append(lg); F.append(f); Y.append(y)
        return torch.cat(L).numpy(), torch.cat(F).numpy(), torch.cat(Y).numpy()

    res = {}
    data = load_dataset(testdev, points=model.cfg.points)
    idx = np.flatnonzero(np.asarray(data.split) == "test")
    for seed in (0, 1, 2):
        res[f"test_logits{seed}"], res[f"test_feats{seed}"], res["test_y"] = feats(
            eval_dataset(data, idx, model.cfg.points, run.eval_rotate, seed))
    ml, mf, names = [], [], []
    for p in mesh_files(meshes):
        for seed in (0, 1, 2):
            pts, nrm = read_input(p, model.cfg.points, seed=seed, estimated_normals=model.cfg.estimated_normals)
            with torch.no_grad():
                lg, f = model(torch.as_tensor(pts)[None].float(), torch.as_tensor(nrm)[None].float(), pooled=True)
            ml.append(lg.numpy()[0]); mf.append(f.numpy()[0]); names.append(f"{p.name}:{seed}")
    res["mesh_logits"], res["mesh_feats"], res["mesh_names"] = np.array(ml), np.array(mf), np.array(names)
    data = load_dataset(train, points=model.cfg.points)
    res["train_logits"], res["train_feats"], res["train_y"] = feats(
        eval_dataset(data, np.arange(len(data.labels)), model.cfg.points, run.eval_rotate, 123))
    np.savez(cache, **res)


def analyse(d) -> None:
    tr_f, tr_y, tr_l = d["train_feats"].astype(np.float64), d["train_y"], d["train_logits"]
    mf, ml, names = d["mesh_feats"].astype(np.float64), d["mesh_logits"], d["mesh_names"]
    C = tr_l.shape[1]
    def unit(x): return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    def knn(f, bank, k=5):
        s = unit(f) @ unit(bank).T
        return np.sort(s, 1)[:, -k]
    def maha_fit(F, y, norm):
        X = unit(F) if norm else F
        mu = np.stack([X[y == c].mean(0) for c in range(C)])
        R = X - mu[y]
        cov = R.T @ R / len(X) + 1e-6 * np.eye(X.shape[1])
        P = np.linalg.pinv(cov)
        mu0 = X.mean(0); cov0 = np.cov(X.T) + 1e-6 * np.eye(X.shape[1]); P0 = np.linalg.pinv(cov0)
        def score(f, relative=False):
            Z = unit(f) if norm else f
            D = np.stack([np.einsum("nd,dk,nk->n", Z - mu[c], P, Z - mu[c]) for c in range(C)], 1)
            if relative:
                D0 = np.einsum("nd,dk,nk->n", Z - mu0, P0, Z - mu0)
                D = D - D0[:, None]
            return -D.min(1)
        return score
    ma_raw, ma_unit = maha_fit(tr_f, tr_y, False), maha_fit(tr_f, tr_y, True)
    scores = {
      "knn5": lambda f, l: knn(f, tr_f, 5),
      "knn1": lambda f, l: knn(f, tr_f, 1),
      "knn20": lambda f, l: knn(f, tr_f, 20),
      "maxprob": lambda f, l: softmax(l).max(1),
      "energy": lambda f, l: lse(l),
      "maha_raw": lambda f, l: ma_raw(f),
      "maha_unit": lambda f, l: ma_unit(f),
      "relmaha_raw": lambda f, l: ma_raw(f, True),
      "relmaha_unit": lambda f, l: ma_unit(f, True),
      "featnorm": lambda f, l: np.linalg.norm(f, axis=1),
    }
    for name, fn in scores.items():
        row = []
        for keep in (0.95, 0.93):
            flagged_all, kept = [], []
            for s in range(3):
                t = fn(d[f"test_feats{s}"].astype(np.float64), d[f"test_logits{s}"])
                thr = np.quantile(fn(d["test_feats0"].astype(np.float64), d["test_logits0"]), 1 - keep)
                kept.append((t >= thr).mean())
            m = fn(mf, ml)
            fl = m < thr
            per_mesh = {}
            for n, f in zip(names, fl): per_mesh.setdefault(n.split(":")[0], []).append(f)
            nflag = sum(np.mean(v) >= 0.5 for v in per_mesh.values())
            row.append(f"keep{keep}: kept {np.mean(kept[1:]):.3f} flagged {nflag}/8 [{','.join(k[:5] for k,v in per_mesh.items() if np.mean(v)>=0.5)}]")
        print(f"{name:13s}", " | ".join(row))
    print("percentile of each mesh's mean score among test-dev seed0 scores:")
    sel = ["knn5", "energy", "relmaha_unit", "relmaha_raw", "maxprob"]
    T = {n: scores[n](d["test_feats0"].astype(np.float64), d["test_logits0"]) for n in sel}
    M = {n: scores[n](mf, ml) for n in sel}
    meshes = sorted({n.split(":")[0] for n in names})
    print(" " * 16 + " ".join(f"{n:>12s}" for n in sel))
    for mname in meshes:
        ix = [i for i, n in enumerate(names) if n.startswith(mname + ":")]
        print(f"{mname:16s}" + " ".join(f"{100*np.mean([(T[n] < M[n][i]).mean() for i in ix]):12.1f}" for n in sel))
    # combos: flag if any of the chosen scores below its threshold; tune per-score keep so that joint keep on seed0 = target
    import itertools
    for combo in [("energy", "knn5"), ("energy", "relmaha_unit"), ("energy", "relmaha_raw"), ("energy", "knn5", "relmaha_unit")]:
        for target in (0.95, 0.93):
            lo, hi = target, 1.0
            for _ in range(40):
                q = (lo + hi) / 2
                thr = {n: np.quantile(T[n], 1 - q) for n in combo}
                k = np.all([T[n] >= thr[n] for n in combo], 0).mean()
                lo, hi = (q, hi) if k < target else (lo, q)
            thr = {n: np.quantile(T[n], 1 - hi) for n in combo}
            keeps = []
            for s in (1, 2):
                ts = {n: scores[n](d[f"test_feats{s}"].astype(np.float64), d[f"test_logits{s}"]) for n in combo}
                keeps.append(np.all([ts[n] >= thr[n] for n in combo], 0).mean())
            fl = ~np.all([M[n] >= thr[n] for n in combo], 0)
            per = {}
            for n, f in zip(names, fl): per.setdefault(n.split(":")[0], []).append(f)
            print(combo, target, f"each {hi:.3f} kept(s1,s2) {np.round(keeps,3)} flagged {sum(np.mean(v)>=0.5 for v in per.values())}/8", [k for k,v in per.items() if np.mean(v)>=0.5])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("cache")
    ap.add_argument("--train", default="../shared/data/modelnet40_hdf5_1024")
    ap.add_argument("--testdev", default="../shared/data/modelnet40_testdev_hdf5_1024")
    ap.add_argument("--meshes", default="../shared/meshes")
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    if not cache.exists():
        compute(args.model, cache, args.train, args.testdev, args.meshes)
    analyse(np.load(cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
