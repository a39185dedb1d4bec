"""benchmarks/accuracy/unknown_ensemble_scores.py: the ensemble- and vote-based "unknown" scores on known logits."""

import numpy as np
import torch

from benchmarks.accuracy import unknown_ensemble_scores as ues


def test_scores_read_members_and_votes_as_documented():
    rng = np.random.default_rng(0)
    L = rng.normal(size=(3, 2, 5, 4)) * 3  # 3 votes, 2 members, 5 shapes, 4 classes
    L[:, 1, 0] = L[:, 0, 0]  # shape 0: the members agree exactly
    s = ues.scores(L)
    ens0 = L[:, :, :, :].mean(1)[0]
    assert np.allclose(s["energy, vote 0 (the shipped score)"], torch.logsumexp(torch.tensor(ens0), -1).numpy())
    assert np.allclose(s["energy, mean over 3 votes"],
                       torch.logsumexp(torch.tensor(L.mean(1)), -1).numpy().mean(0))
    mi = s["-mutual information of the members, vote 0"]
    assert abs(mi[0]) < 1e-12 and (mi[1:] < 0).all()  # agreement costs nothing, any disagreement lowers the score
    agree = s["members' agreement (sum of p1 * p2), vote 0"]
    p = torch.softmax(torch.tensor(L[0, 0, 0]), -1).numpy()
    assert np.isclose(agree[0], (p * p).sum())
    assert np.allclose(s["weakest member's energy, vote 0"],
                       np.minimum(*torch.logsumexp(torch.tensor(L[0]), -1).numpy()))


def test_analyse_flags_a_mesh_whose_energy_falls_below_the_test_dev_quantile(capsys):
    rng = np.random.default_rng(1)
    test = rng.normal(size=(2, 2, 200, 4)) + np.array([8.0, 0, 0, 0])  # confident in-class shapes
    mesh = np.concatenate([np.full((2, 2, 3, 4), -5.0), test[:, :, :3]], 2)  # "low" (3 samples), then "high"
    names = np.array([f"low.obj:{i}" for i in range(3)] + [f"high.obj:{i}" for i in range(3)])
    ues.analyse({"test0": test, "test1": test, "test2": test, "mesh": mesh, "names": names})
    out = capsys.readouterr().out
    block = out.split("energy, vote 0 (the shipped score)\n")[1].split("\n")
    assert block[0] == "  keep 0.95 of seed 0: seeds 1/2 keep 0.950/0.950; meshes flagged 1/2: low.obj"
    assert block[2].startswith("  percentile among test-dev seed 0: high.obj ") and "low.obj 0.0" in block[2]
