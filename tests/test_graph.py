import torch

from pcsym.geometry.graph import estimate_normals, fps_order, gather, knn, knn_torch, random_order, take


def test_knn_matches_brute_force_and_chunking():
    torch.manual_seed(0)
    q, keys = torch.randn(3, 70, 3), torch.randn(3, 200, 3)
    ref = torch.cdist(q, keys).topk(7, largest=False).indices
    assert torch.equal(knn(q, keys, 7), ref)  # the compiled kernel where it builds (tests/test_native.py)
    assert torch.equal(knn_torch(q, keys, 7), ref)
    assert torch.equal(knn_torch(q, keys, 7, entries=9 * 200), ref)  # several query chunks per cloud
    assert torch.equal(knn_torch(q, keys, 7, entries=2 * 70 * 200), ref)  # two clouds per block
    assert torch.equal(knn(q.double(), keys.double(), 7), ref)  # float64: torch's path


def test_knn_self_is_first_neighbour():
    p = torch.randn(2, 50, 3)
    idx = knn(p, p, 4)
    assert torch.equal(idx[..., 0], torch.arange(50).expand(2, 50))


def test_knn_rejects_k_larger_than_cloud():
    import pytest

    with pytest.raises(ValueError, match="only 5 points"):
        knn(torch.randn(1, 5, 3), torch.randn(1, 5, 3), 6)


def test_knn_blocks_cover_everything_within_the_budget():
    # every (cloud, query) pair in exactly one block; no block over budget (one query row at least),
    # so a 4096-point cloud never materialises its N x N distances
    from pcsym.geometry.graph import knn_blocks

    for b, m, n, entries in [(16, 512, 1024, 1 << 19), (16, 32, 128, 1 << 19), (3, 4096, 4096, 1 << 19),
                             (2, 7, 5, 3), (5, 10, 10, 250)]:
        seen = torch.zeros(b, m, dtype=torch.int)
        for clouds, rows in knn_blocks(b, m, n, entries):
            block = seen[clouds, rows]
            assert block.numel() * n <= max(entries, n)
            seen[clouds, rows] += 1
        assert torch.equal(seen, torch.ones(b, m, dtype=torch.int))


def test_orders_are_permutations_and_prefixes_are_subsets():
    p = torch.randn(2, 64, 3)
    for order in (random_order(2, 64), fps_order(p)):
        assert order.shape == (2, 64)
        assert torch.equal(order.sort(1).values, torch.arange(64).expand(2, 64))
    sub = take(p, fps_order(p, 16))
    assert sub.shape == (2, 16, 3)


def test_fps_spreads_points_better_than_random():
    torch.manual_seed(0)
    p = torch.rand(1, 2000, 3)
    def min_gap(idx):
        s = take(p, idx)[0]
        d = torch.cdist(s, s) + torch.eye(len(s)) * 9
        return d.min()
    assert min_gap(fps_order(p, 64)) > 2 * min_gap(random_order(1, 2000)[:, :64])


def test_gather_shapes():
    x = torch.arange(2 * 5 * 3, dtype=torch.float).reshape(2, 5, 3)
    idx = torch.tensor([[[0, 4]], [[1, 1]]])
    g = gather(x, idx)
    assert g.shape == (2, 1, 2, 3)
    assert torch.equal(g[1, 0, 0], x[1, 1])


def test_estimated_normals_on_a_sphere_point_outward_and_rotate_with_it():
    torch.manual_seed(0)
    p = torch.nn.functional.normalize(torch.randn(1, 800, 3), dim=-1)
    n = estimate_normals(p)
    assert (n * p).sum(-1).min() > 0.95  # sphere normal = position, oriented outward
    R = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0].float()
    n_rot = estimate_normals(p @ R.T)
    assert torch.allclose(n_rot, n @ R.T, atol=1e-4)


def test_normals_are_one_estimate_in_numpy_and_torch_and_commute_with_reflections():
    """The torch-free runtime's estimate (classify) is the one the training caches use; an improper
    orthogonal map (a rotation times the inversion) carries the normals along."""
    import numpy as np

    from pcsym.geometry import numpy_graph as runtime

    rng = np.random.default_rng(0)
    p = (rng.normal(size=(3, 400, 3)) * [1.0, 0.6, 0.3]).astype(np.float32)  # ellipsoidal blobs
    n = runtime.estimate_normals(p)
    np.testing.assert_allclose(n, estimate_normals(torch.from_numpy(p)).numpy(), atol=1e-6)
    np.testing.assert_allclose(runtime.estimate_normals(p[1]), n[1], atol=1e-6)  # one cloud, (N, 3)
    q = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    q = q if np.linalg.det(q) < 0 else -q  # orthogonal with det -1: a reflection
    moved = runtime.estimate_normals((p @ q.T).astype(np.float32))
    assert np.abs((moved - n @ q.T)).max() < 1e-4


def test_sampling_orders_keep_their_promises():
    """random-fps: layer 1 keeps the random order's subset, deeper layers a farthest-point sample of it;
    fps: the farthest-point prefix; every order is a permutation. The numpy runtime computes the same."""
    import numpy as np

    from pcsym.geometry import numpy_graph as runtime
    from pcsym.geometry.graph import sampling_order, vote_order

    torch.manual_seed(0)
    p = torch.rand(3, 256, 3)
    sizes = [128, 32, 8]
    for sampling in ("random", "fps", "random-fps"):
        for vote in (0, 3):
            order = sampling_order(p, sampling, sizes, vote)
            assert torch.equal(order.sort(1).values, torch.arange(256).expand(3, 256))
            one = sampling_order(p[:1], sampling, sizes, vote)  # exports hold one seeded order per vote
            seeded = vote_order(vote, 1, 256)[0].numpy()
            np.testing.assert_array_equal(runtime.sampling_order(p[:1].numpy(), sampling, sizes, seeded), one.numpy())
    rnd = vote_order(0, 3, 256)
    mixed = sampling_order(p, "random-fps", sizes, 0)
    assert torch.equal(mixed[:, 128:], rnd[:, 128:])
    assert torch.equal(mixed[:, :128].sort(1).values, rnd[:, :128].sort(1).values)
    head = take(p, rnd[:, :128])
    assert torch.equal(take(p, mixed[:, :32]), take(head, fps_order(head, 32)))
    assert torch.equal(sampling_order(p, "fps", sizes)[:, :128], fps_order(p, 128))
    # training draws a fresh random subset each time; eval-mode orders are seeded
    assert not torch.equal(sampling_order(p, "random-fps", sizes), sampling_order(p, "random-fps", sizes))
    assert torch.equal(mixed, sampling_order(p, "random-fps", sizes, 0))


def test_fps_never_picks_a_point_twice_in_a_cloud_of_duplicates():
    """A cloud with fewer distinct points than FPS must pick (duplicated vertices, a tiny mesh): every
    pick is a different index, the orders stay permutations, and the numpy runtime agrees."""
    import numpy as np

    from pcsym.geometry import numpy_graph as runtime
    from pcsym.geometry.graph import sampling_order, vote_order

    torch.manual_seed(0)
    p = torch.rand(1, 12, 3).repeat(1, 16, 1)  # 192 points, 12 distinct
    first = fps_order(p, 64)
    assert len(set(first[0].tolist())) == 64
    np.testing.assert_array_equal(runtime.fps_order(p.numpy(), 64), first.numpy())
    for sampling in ("fps", "random-fps"):
        order = sampling_order(p, sampling, [96, 24, 6], 0)
        assert torch.equal(order.sort(1).values, torch.arange(192)[None])
        seeded = vote_order(0, 1, 192)[0].numpy()
        np.testing.assert_array_equal(runtime.sampling_order(p.numpy(), sampling, [96, 24, 6], seeded), order.numpy())
