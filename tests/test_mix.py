"""pcsym.training.mix: point CutMix moves a ball of the partner's points rigidly onto a ball of the shape's own
points, and the soft target weighs the two classes by their shares of the points."""

import torch

from pcsym.training.mix import mix_generator, point_cutmix


def _batch(b=8, n=64):
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(b, n, 3, generator=g)
    nrm = torch.nn.functional.normalize(torch.randn(b, n, 3, generator=g), dim=-1)  # unique: they name points
    return pos, nrm, torch.arange(b) % 5


def _is_ball(points, centre, inside):
    d = (points - centre).norm(dim=1)
    return d[inside].max() <= d[~inside].min() + 1e-6


def test_cutmix_replaces_a_ball_by_the_partners_ball_moved_rigidly():
    pos, nrm, y = _batch()
    out, out_n, target = point_cutmix(pos, nrm, y, 5, 1.0, mix_generator(3, 1, 2))
    assert torch.allclose(target.sum(1), torch.ones(len(y)))
    flat = nrm.reshape(-1, 3)
    mixed = 0
    for i in range(len(y)):
        changed = (out_n[i] != nrm[i]).any(1)
        if not changed.any():
            assert torch.equal(out[i], pos[i]) and target[i, y[i]] == 1
            continue
        mixed += 1
        # each new point is a point of one partner j (found by its normal), all moved by one translation
        src = torch.cdist(out_n[i][changed], flat).argmin(1)
        j = int(src[0]) // pos.shape[1]
        src = src - j * pos.shape[1]
        assert j != i and (src >= 0).all() and (src < pos.shape[1]).all()
        shift = out[i][changed] - pos[j][src]
        assert torch.allclose(shift, shift[0].expand_as(shift), atol=1e-5)
        # what left is a ball of this shape's points, what came a ball of the partner's, centre onto centre
        here = out[i][changed][(out[i][changed] - pos[i][changed]).norm(dim=1).argmin()]
        assert _is_ball(pos[i], here, changed)
        taken = torch.zeros(pos.shape[1], dtype=torch.bool)
        taken[src] = True
        assert _is_ball(pos[j], here - shift[0], taken)
        # soft target: the shape's class weighs its kept share, the partner's class the rest
        kept = 1 - float(changed.float().mean())
        assert abs(float(target[i, y[i]]) - (kept if y[j] != y[i] else 1.0)) < 1e-6
        assert abs(float(target[i, y[j]]) - (1 - kept if y[j] != y[i] else 1.0)) < 1e-6
    assert mixed >= 4


def test_cutmix_is_seeded_and_probability_zero_changes_nothing():
    pos, nrm, y = _batch()
    a = point_cutmix(pos, nrm, y, 5, 0.5, mix_generator(0, 4, 7))
    b = point_cutmix(pos, nrm, y, 5, 0.5, mix_generator(0, 4, 7))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    c = point_cutmix(pos, nrm, y, 5, 0.5, mix_generator(0, 4, 8))
    assert not torch.equal(a[0], c[0])
    p, n, t = point_cutmix(pos, nrm, y, 5, 0.0, mix_generator(0, 0, 0))
    assert torch.equal(p, pos) and torch.equal(n, nrm) and torch.equal(t, torch.eye(5)[y])
