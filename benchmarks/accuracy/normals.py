"""How close pcsym's estimated normals come to a dataset's own (mesh) normals.

Usage: python -m benchmarks.accuracy.normals --data DATASET [--points 1024] [--seed 0] [--out PREFIX]

DATASET must carry its own normals (the modelnet40_normal_resampled layout, or a cache prepared from it). Each
shape is cut to --points random points and its normals are estimated as training and `classify` estimate them
(:func:`pcsym.geometry.numpy_graph.estimate_normals`: PCA over 16 neighbours, oriented away from the centroid).
Per shape: the mean |cos| between estimated and true normals (the tangent plane, sign aside), and the share of
points whose sign agrees with the true normal, for the shipped centroid orientation and for a minimum-spanning-tree
propagation (Hoppe et al. 1992: flip along the tree of the kNN graph weighted by 1 - |n_i . n_j|, from the point
farthest from the centroid, oriented outward) -- the standard better orientation, to see whether orientation is
what the estimate lacks. Writes PREFIX.{json,md} (default benchmarks/results/normals_orientation).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, write_results

DEFAULT_OUT = RESULTS / "normals_orientation"


def mst_orient(pos: np.ndarray, normals: np.ndarray, k: int = 10) -> np.ndarray:
    """``normals`` (N, 3) of cloud ``pos`` (N, 3) flipped along a minimum spanning tree of the kNN graph, from
    the point farthest from the centroid (oriented away from it); points the tree does not reach keep theirs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree

    from pcsym.geometry.numpy_graph import knn

    n = len(pos)
    k = min(k, n - 1)
    nb = knn(pos[None], pos[None], k + 1)[0][:, 1:]
    rows, cols = np.repeat(np.arange(n), k), nb.reshape(-1)
    weight = 1.0 - np.abs((normals[rows] * normals[cols]).sum(-1)) + 1e-6  # > 0: a zero weight is no edge
    graph = coo_matrix((weight, (rows, cols)), shape=(n, n)).tocsr()
    tree = minimum_spanning_tree(graph.maximum(graph.T))
    centre = pos.mean(0)
    root = int(np.argmax(((pos - centre) ** 2).sum(-1)))
    out = normals.copy()
    if (out[root] * (pos[root] - centre)).sum() < 0:
        out[root] *= -1
    order, pred = breadth_first_order(tree, root, directed=False)
    for v in order[1:]:  # parents come before their children in breadth-first order
        if (out[v] * out[pred[v]]).sum() < 0:
            out[v] *= -1
    return out


def measure(points: np.ndarray, true_normals: np.ndarray) -> dict:
    """Agreement of the estimated normals of one cloud (N, 3) with its true normals (N, 3)."""
    from pcsym.geometry.numpy_graph import estimate_normals

    est = estimate_normals(points)
    mst = mst_orient(points, est)
    cos, cos_mst = (est * true_normals).sum(-1), (mst * true_normals).sum(-1)
    return {"abs_cos": float(np.abs(cos).mean()), "sign_centroid": float((cos > 0).mean()),
            "sign_mst": float((cos_mst > 0).mean())}


def run(data_path: str, points: int = 1024, seed: int = 0) -> dict:
    from pcsym.data.datasets import load_dataset
    from pcsym.errors import PcsymError

    data = load_dataset(data_path, points=points)
    if data.normals_estimated:
        raise PcsymError("this dataset has no normals of its own to compare with (estimated when it was "
                         "prepared)", path=data_path)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(len(data.labels)):
        keep = rng.choice(data.points.shape[1], min(points, data.points.shape[1]), replace=False)
        row = measure(data.points[i, keep], data.normals[i, keep])
        rows.append({"shape": i, "class": str(data.class_names[data.labels[i]]), **row})
    mean = {key: float(np.mean([r[key] for r in rows])) for key in ("abs_cos", "sign_centroid", "sign_mst")}
    return {"data": str(data_path), "points": points, "seed": seed, "shapes": len(rows), "mean": mean, "rows": rows}


def markdown(result: dict, command: str, seconds: float) -> str:
    m = result["mean"]
    lines = [f"# Estimated normals against the data's own ({result['shapes']} shapes, {result['points']} points)",
             "", f"`{command}` ({seconds:.0f} s; seed {result['seed']} draws the points of each shape)", "",
             "| shape | class | mean abs cos | sign agrees, centroid (shipped) | sign agrees, MST |", "|---|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['class']} | {r['abs_cos']:.3f} | {r['sign_centroid']:.1%} | {r['sign_mst']:.1%} |"
              for r in result["rows"]]
    lines += [f"| **mean** | | **{m['abs_cos']:.3f}** | **{m['sign_centroid']:.1%}** | **{m['sign_mst']:.1%}** |", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--points", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    from pcsym.errors import PcsymError

    t0 = time.perf_counter()
    try:
        result = run(args.data, args.points, args.seed)
    except PcsymError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    command = "python -m benchmarks.accuracy.normals " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    json_path, md_path = write_results(out.parent, out.name, {**result, "command": command, "seconds": seconds},
                                       markdown(result, command, seconds), quick=False)
    m = result["mean"]
    print(f"mean |cos| {m['abs_cos']:.3f}; sign agrees: centroid {m['sign_centroid']:.1%}, MST {m['sign_mst']:.1%}"
          f" -> {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
