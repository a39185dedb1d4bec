"""Compare "unknown" scores that only an ensemble or test-time votes can give against the shipped energy score:
energy averaged over votes, the weakest member's energy, the members' (and votes') disagreement (mutual
information; Lakshminarayanan et al., NeurIPS 2017), the spread of the energy over votes.

Usage: python -m benchmarks.accuracy.unknown_ensemble_scores MODEL CACHE.npz [--testdev D] [--meshes F] [--votes 4]
MODEL is an ensemble (`pcsym ensemble`, e.g. the shipped so3). Computes (once; CACHE.npz is reused) every member's
logits for every vote (the vote's downsampling order, as `evaluate --votes`) of the test-dev shapes (evaluation seeds
0-2) and of each mesh (3 surface samples), then prints, for each score, the meshes flagged (a mesh counts when at
least 2 of its 3 samples fall below) at thresholds keeping 95% / 93% of test-dev seed 0, the share of test-dev
seeds 1-2 kept, and each mesh's percentile among the test-dev scores. An investigation tool behind
docs/experiments.md ("unknown": the energy score); its sibling unknown_scores compares single-network scores.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.accuracy.unknown_report import mesh_files
from pcsym.inference.runtime import energy as lse, softmax  # the shipped score, as classify computes it


def compute(name: str, cache: Path, testdev: str, meshes: str, votes: int) -> None:
    import torch

    from pcsym.data.datasets import load_dataset
    from pcsym.data.transforms import eval_dataset
    from pcsym.errors import PcsymError
    from pcsym.inference.predict import read_input
    from pcsym.models.checkpoint import load_model, train_config_of
    from pcsym.models.ensemble import is_ensemble, members_of
    from pcsym.training.loader import make_loader

    model, ckpt = load_model(name)
    if not is_ensemble(model):
        raise PcsymError(f"{name} is one network; these scores need an ensemble (pcsym ensemble)")
    run = train_config_of(ckpt)
    model.eval()

    def logits(pos, nrm):  # (votes, members, B, classes)
        out = []
        for v in range(votes):
            p, f, en = model.prepare(pos, nrm, None, v)
            out.append(torch.stack([m.forward_ordered(p, f, normals=en) for m in members_of(model)]))
        return torch.stack(out)

    res = {}
    data = load_dataset(testdev, points=model.cfg.points)
    idx = np.flatnonzero(np.asarray(data.split) == "test")
    with torch.no_grad():
        for seed in (0, 1, 2):
            ds = eval_dataset(data, idx, model.cfg.points, run.eval_rotate, run.seed, seed)
            res[f"test{seed}"] = torch.cat([logits(pos, nrm) for pos, nrm, _ in make_loader(ds, 32, False, 0, 0, 0)],
                                           2).numpy()
        ml, names = [], []
        for p in mesh_files(meshes):
            for seed in (0, 1, 2):
                pts, nrm = read_input(p, model.cfg.points, seed=seed, estimated_normals=model.cfg.estimated_normals)
                ml.append(logits(torch.as_tensor(pts)[None].float(), torch.as_tensor(nrm)[None].float()).numpy()[:, :, 0])
                names.append(f"{p.name}:{seed}")
    np.savez(cache, mesh=np.stack(ml, 2), names=np.array(names), **res)


def entropy(p):
    return -(p * np.log(np.clip(p, 1e-12, 1))).sum(-1)


def scores(L) -> dict:
    """L: (votes, members, N, classes) logits -> {name: (N,) score, higher = more in-class}."""
    ens = L.mean(1)  # the ensemble's logits, per vote
    P = softmax(L)
    pv = P.reshape(-1, *P.shape[2:])  # every (vote, member) pair
    votes = L.shape[0]
    out = {
        "energy, vote 0 (the shipped score)": lse(ens[0]),
        f"energy, mean over {votes} votes": lse(ens).mean(0),
        f"energy of the logits averaged over {votes} votes": lse(ens.mean(0)),
        "weakest member's energy, vote 0": lse(L[0]).min(0),
        "-mutual information of the members, vote 0": entropy(P[0]).mean(0) - entropy(P[0].mean(0)),
        f"-mutual information of members x {votes} votes": entropy(pv).mean(0) - entropy(pv.mean(0)),
        f"max probability, averaged over members x {votes} votes": pv.mean(0).max(-1),
        f"-std of the energy over {votes} votes": -lse(ens).std(0),
    }
    if L.shape[1] == 2:
        out["members' agreement (sum of p1 * p2), vote 0"] = (P[0, 0] * P[0, 1]).sum(-1)
    return out


def analyse(d) -> None:
    names = d["names"]
    meshes = sorted({n.split(":")[0] for n in names})
    rows = {m: [i for i, n in enumerate(names) if n.startswith(m + ":")] for m in meshes}
    test = [scores(d[f"test{s}"]) for s in (0, 1, 2)]
    mesh = scores(d["mesh"])
    for name, t0 in test[0].items():
        print(name)
        for keep in (0.95, 0.93):
            thr = np.quantile(t0, 1 - keep)
            kept = [float((test[s][name] >= thr).mean()) for s in (1, 2)]
            flagged = [m for m in meshes if sum(mesh[name][i] < thr for i in rows[m]) >= 2]
            print(f"  keep {keep:.2f} of seed 0: seeds 1/2 keep {kept[0]:.3f}/{kept[1]:.3f}; meshes flagged "
                  f"{len(flagged)}/{len(meshes)}: {', '.join(flagged)}")
        print("  percentile among test-dev seed 0: " + ", ".join(
            f"{m} {100 * np.mean([(t0 < mesh[name][i]).mean() for i in rows[m]]):.1f}" for m in meshes))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("cache")
    ap.add_argument("--testdev", default="../shared/data/modelnet40_testdev_hdf5_1024")
    ap.add_argument("--meshes", default="../shared/meshes")
    ap.add_argument("--votes", type=int, default=4)
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    if not cache.exists():
        compute(args.model, cache, args.testdev, args.meshes, args.votes)
    analyse(np.load(cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
