"""Training learns for real, and evaluation metrics agree with scikit-learn."""

import re

import numpy as np
import pytest
import torch

from pcsym.config import ModelConfig
from pcsym.config import TrainConfig
from pcsym.training.evaluate import metrics_from_predictions
from pcsym.training.train import train

#: the small so2 model the Trainer tests build (seconds per epoch on the sample data)
TINY_MODEL = dict(group="so2", points=256, widths=(8, 16), strides=(2, 4), invariant_dims=16)


def test_metrics_on_a_known_confusion():
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix

    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 2, 1, 1, 2, 2, 0, 2])
    m = metrics_from_predictions(y_true, y_pred, ["a", "b", "c"])
    assert m["overall_accuracy"] == pytest.approx(0.7)
    assert m["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": 0.75}
    assert m["mean_class_accuracy"] == pytest.approx((0.5 + 1.0 + 0.75) / 3)
    assert m["mean_class_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["confusion_matrix"] == confusion_matrix(y_true, y_pred).tolist()


def test_train_rejects_unusable_settings_before_touching_anything(tmp_path):
    from pcsym.errors import PcsymError

    for bad, msg in (({"rotate": "x"}, "unknown --rotate 'x'"), ({"schedule": "linear"}, "unknown --schedule"),
                     ({"scale": (1.2, 0.8)}, "--scale needs 0 < LOW <= HIGH, got '1.2,0.8'"),
                     ({"val_fraction": 1.0}, "--val-fraction in (0, 1)"),
                     ({"balance": "yes"}, "unknown --balance 'yes': use none, loss or sampler"),
                     ({"optimizer": "adam"}, "unknown --optimizer 'adam': use adamw or sgd"),
                     ({"ema": 1.0}, "--ema must be in [0, 1) (0 = off; e.g. 0.999), got 1"),
                     ({"mix": 1.5}, "--mix must be in [0, 1] (the probability a training shape is mixed), got 1.5")):
        out = tmp_path / "never"
        with pytest.raises(PcsymError, match=re.escape(msg)):
            train(ModelConfig(group="m"), TrainConfig(data=str(tmp_path / "missing"), out=str(out), **bad))
        assert not out.exists()


def test_short_training_beats_chance_clearly(sample_dataset, tmp_path):
    """6 epochs of an o2 model on the 240 training shapes of the sample: chance is 10%."""
    mcfg = ModelConfig(group="o2", points=512, widths=(24, 48), strides=(2, 4), invariant_dims=64)
    tcfg = TrainConfig(data=str(sample_dataset), out=str(tmp_path / "run"), epochs=6, batch_size=16,
                       seed=0, threads=2, rotate="z", eval_rotate="z")
    summary = train(mcfg, tcfg)
    accs = [h["val_acc"] for h in summary["history"]]
    assert summary["best_val_acc"] >= 0.35, accs
    assert summary["history"][-1]["train_loss"] < summary["history"][0]["train_loss"]
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model_config"]
    assert saved["estimated_normals"] == 1024  # the sample's h5 clouds have no normals: PCA in 1024 points


def test_norm_recalibration_averages_batch_statistics_and_leaves_rng_alone():
    import torch

    from pcsym.training.train import recalibrate_norms
    from pcsym.models.groups import gspace
    from pcsym.models.layers import EquivBatchNorm

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = EquivBatchNorm([gspace("trivial").trivial_repr] * 3)

        def forward(self, pos, nrm):
            return self.bn(pos)

    g = torch.Generator().manual_seed(0)
    pos = torch.randn(12, 5, 3, generator=g) * torch.tensor([1.0, 2.0, 3.0]) + 4.0
    ds = torch.utils.data.TensorDataset(pos, torch.zeros_like(pos), torch.zeros(12, dtype=torch.long))
    toy = Toy()
    toy.bn.running_var.fill_(1e6)  # stale statistics
    seen = []
    toy.bn.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, 3).clone()))
    rng = torch.get_rng_state()
    recalibrate_norms(toy, ds, batches=3, batch_size=4, seed=0, epoch=0)
    assert torch.equal(rng, torch.get_rng_state()) and len(seen) == 3 and toy.bn.momentum == 0.1
    mean = torch.stack([x.mean(0) for x in seen]).mean(0)
    var = torch.stack([(x - x.mean(0)).pow(2).mean(0) for x in seen]).mean(0)
    assert torch.allclose(toy.bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(toy.bn.running_var, var, rtol=1e-5)


def test_votes_average_over_downsampling_orders(sample_dataset):
    import torch

    from pcsym.data.datasets import load_dataset
    from pcsym.training.evaluate import predict
    from pcsym.data.transforms import PointCloudDataset
    from pcsym.geometry.graph import eval_order
    from pcsym.models.classifier import build_model

    data = load_dataset(sample_dataset, points=256)
    model = build_model(ModelConfig(group="m", points=256, widths=(16,), strides=(4,), invariant_dims=16,
                                    class_names=list(data.class_names))).eval()
    ds = PointCloudDataset(data, np.arange(8), points=256, rotate="none", resample=False)
    one, _ = predict(model, ds, votes=1)
    two, y = predict(model, ds, votes=2)
    pos, nrm, _ = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    with torch.no_grad():
        second = torch.softmax(model(pos, nrm, order=eval_order(8, 256, seed=1)), -1)
    assert torch.allclose(two, (one + second) / 2, atol=1e-6)
    assert not torch.allclose(one, second, atol=1e-4)  # a different downsampling really was used


@pytest.mark.parametrize("sampling", ["random", "random-fps"])
def test_evaluation_figures_do_not_depend_on_the_batch_size(sample_dataset, sampling):
    """``evaluate --batch-size`` promises the same figures at any batch size: every cloud of a batch is
    downsampled in the same seeded order, for every vote."""
    import torch

    from pcsym.data.datasets import load_dataset
    from pcsym.data.transforms import PointCloudDataset
    from pcsym.models.classifier import build_model
    from pcsym.training.evaluate import predict

    torch.manual_seed(0)
    data = load_dataset(sample_dataset, points=256)
    model = build_model(ModelConfig(group="o2", points=256, widths=(16, 24), strides=(2, 4), invariant_dims=16,
                                    sampling=sampling, class_names=list(data.class_names))).eval()
    with torch.no_grad():  # an untrained head is near uniform: make the clouds' probabilities differ clearly
        last = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(10)
    ds = PointCloudDataset(data, np.arange(9), points=256, rotate="z", seed=4)
    by_one, y1 = predict(model, ds, batch_size=1, votes=2, first_order=5)
    by_four, y4 = predict(model, ds, batch_size=4, votes=2, first_order=5)
    assert torch.equal(y1, y4)
    assert torch.allclose(by_one, by_four, atol=1e-6)
    assert float((by_one - by_one.mean(0)).abs().max()) > 1e-3  # the clouds' predictions differ (by ~2e-3)


def test_balanced_class_weights_equalise_the_expected_loss():
    from pcsym.training.parts import balanced_class_weights

    counts = np.array([889, 106, 0, 200])
    w = balanced_class_weights(counts).numpy()
    assert w[2] == 0  # an absent class gets no weight (and no division by zero)
    share = w * counts  # each present class's total weight in an epoch
    assert np.allclose(share[[0, 1, 3]], counts.sum() / 3)
    assert np.isclose((w * counts).sum() / counts.sum(), 1.0)  # the mean weight per shape is 1


def test_balanced_sampler_draws_classes_equally_and_is_seeded(sample_dataset):
    """--balance sampler: an epoch of len(ds) draws, each class about equally often even when the
    split is imbalanced, the same draws for the same (seed, epoch) and other draws for the next epoch."""
    from pcsym.data.datasets import load_dataset
    from pcsym.training.loader import make_loader
    from pcsym.data.transforms import PointCloudDataset

    data = load_dataset(sample_dataset, points=64)
    labels = np.asarray(data.labels)
    keep = np.concatenate([np.flatnonzero(labels == c)[: 4 + 8 * c] for c in range(int(labels.max()) + 1)])
    ds = PointCloudDataset(data, keep, points=64, resample=False)
    counts = np.bincount(labels[keep])
    assert counts.max() >= 5 * counts.min()  # a clearly imbalanced split

    def drawn(epoch):
        return np.concatenate([y.numpy() for _, _, y in make_loader(ds, 16, True, 3, epoch, 0, balanced=True)])

    a, b, c = drawn(0), drawn(0), drawn(1)
    assert len(a) == len(ds) and np.array_equal(a, b) and not np.array_equal(a, c)
    freq = np.bincount(np.concatenate([a, c, drawn(2), drawn(3)]), minlength=len(counts)) / (4 * len(ds))
    assert freq.max() < 2 * freq.min(), freq  # vs the split's own ratio of >= 5
    plain = np.concatenate([y.numpy() for _, _, y in make_loader(ds, 16, True, 3, 0, 0)])
    assert np.array_equal(np.bincount(plain, minlength=len(counts)), counts)  # unbalanced: each shape once


def test_training_with_the_accuracy_levers(sample_dataset, tmp_path):
    """SGD, a class-weighted loss or balanced sampling, point CutMix's soft targets and point-pair edge
    features together: short runs train (finite, falling loss), use SGD's momentum, and save models whose
    config rebuilds them."""
    import torch

    from pcsym.models.checkpoint import read_checkpoint

    mcfg = dict(group="so2", points=256, widths=(12, 16), strides=(2, 4), invariant_dims=16, edge_features="ppf")
    common = dict(data=str(sample_dataset), batch_size=16, seed=1, threads=2, rotate="z", eval_rotate="z",
                  optimizer="sgd", lr=0.05, bn_batches=2, epochs=3, mix=0.5)
    for balance in ("loss", "sampler"):
        out = tmp_path / balance
        summary = train(ModelConfig(**mcfg), TrainConfig(out=str(out), balance=balance, **common))
        losses = [h["train_loss"] for h in summary["history"]]
        assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
        last = torch.load(out / "last.pt", weights_only=False)
        assert "momentum_buffer" in next(iter(last["optimizer"]["state"].values()))
        ckpt = read_checkpoint(out / "best.pt")
        assert ckpt["model_config"]["edge_features"] == "ppf"
        assert ckpt["train_config"]["balance"] == balance and ckpt["train_config"]["mix"] == 0.5


def test_prefetch_yields_the_loaders_batches_in_order_and_stops_cleanly(sample_dataset):
    from pcsym.data.datasets import load_dataset
    from pcsym.training.loader import Prefetch, make_loader
    from pcsym.data.transforms import PointCloudDataset

    ds = PointCloudDataset(load_dataset(sample_dataset), points=256, rotate="so3", jitter=0.01)
    direct = list(make_loader(ds, 8, True, 5, 2, 0, drop_last=True))
    with Prefetch(make_loader(ds, 8, True, 5, 2, 0, drop_last=True)) as batches:
        ahead = list(batches)
    assert len(ahead) == len(direct) == len(ds) // 8
    for a, b in zip(ahead, direct):
        assert all(torch.equal(x, y) for x, y in zip(a, b))  # same shapes, same augmentation draws, same order
    # stopping after 2 batches (the thread blocked on a full queue) ends the thread
    stream = Prefetch(make_loader(ds, 8, True, 5, 2, 0), depth=1)
    first = [b for _, b in zip(range(2), stream)]
    stream.close()
    assert len(first) == 2 and not stream._thread.is_alive()


def test_prefetch_raises_the_loaders_error_in_the_caller():
    from pcsym.training.loader import Prefetch

    def broken():
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"), Prefetch(broken()) as stream:
        for item in stream:
            got.append(item)
    assert got == [1]


def test_trainer_optimiser_takes_the_multi_tensor_update_with_the_same_bits(sample_dataset, tmp_path):
    from pcsym.training.train import Trainer

    for name in ("adamw", "sgd"):
        tr = Trainer(ModelConfig(**TINY_MODEL),
                     TrainConfig(data=str(sample_dataset), out=str(tmp_path / name), optimizer=name, threads=1))
        assert tr.optimizer.defaults["foreach"] is True
        params = [p for p in tr.model.parameters() if p.requires_grad]
        twins = [p.detach().clone().requires_grad_(True) for p in params]
        lr, wd = tr.optimizer.param_groups[0]["lr"], tr.optimizer.defaults["weight_decay"]  # lr: the schedule's
        single = (torch.optim.AdamW(twins, lr=lr, weight_decay=wd) if name == "adamw"
                  else torch.optim.SGD(twins, lr=lr, momentum=0.9, weight_decay=wd))  # torch's CPU default
        g = torch.Generator().manual_seed(0)
        for _ in range(5):
            for p, q in zip(params, twins):
                p.grad = torch.randn(p.shape, generator=g)
                q.grad = p.grad.clone()
            tr.optimizer.step()
            single.step()
        assert all(torch.equal(p, q) for p, q in zip(params, twins))


def test_weight_average_follows_its_formula_swaps_and_restores():
    from pcsym.training.ema import WeightAverage

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[1].bias.requires_grad_(False)  # frozen parameters are not averaged
    ema = WeightAverage(model, 0.75)
    assert "1.bias" not in ema.names
    expected = [p.detach().clone() for p in ema.params]
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        expected = [0.75 * e + 0.25 * p.detach() for e, p in zip(expected, ema.params)]
    assert all(torch.allclose(s, e, atol=1e-6) for s, e in zip(ema.shadow, expected))
    trained, average = [p.detach().clone() for p in ema.params], [s.clone() for s in ema.shadow]
    ema.swap()
    assert ema.swapped and all(torch.equal(p, a) for p, a in zip(ema.params, average))
    with pytest.raises(RuntimeError, match="swap"):
        ema.update()  # the model holds the average: training it would corrupt both
    other = WeightAverage(model, 0.75)
    other.load(ema.state())
    assert other.swapped and other.updates == 3 and all(torch.equal(s, t) for s, t in zip(other.shadow, trained))
    ema.swap()
    assert all(torch.equal(p, t) for p, t in zip(ema.params, trained))
    with pytest.raises(ValueError, match="does not match"):
        WeightAverage(torch.nn.Linear(3, 4), 0.75).load(ema.state())


def test_ema_run_saves_the_average_and_resumes_exactly(sample_dataset, tmp_path):
    """--ema: last.pt/best.pt hold the average (not the trained weights), and a run stopped mid-epoch or
    between epochs resumes to the same bits as an uninterrupted one (with --mix and --outlier-exposure too:
    their draws are seeded by the step)."""
    from pcsym.training.train import Trainer

    common = dict(data=str(sample_dataset), batch_size=8, seed=2, threads=1, epochs=3, max_steps=4, bn_batches=2,
                  ema=0.8, mix=0.5, outlier_exposure=0.1)

    def trainer(name):
        return Trainer(ModelConfig(**TINY_MODEL), TrainConfig(out=str(tmp_path / name), **common))

    trainer("ref").run()
    ref = torch.load(tmp_path / "ref" / "last.pt", weights_only=False)
    assert ref["ema"]["updates"] == 12 and ref["ema"]["swapped"]
    trained = ref["ema"]["shadow"]  # the model holds the average; the trained weights wait beside it
    assert not all(torch.equal(ref["state_dict"][n], w) for n, w in trained.items())
    best = torch.load(tmp_path / "ref" / "best.pt", weights_only=False)
    assert best["epoch"] <= 2 and set(trained) <= set(best["state_dict"])

    for name, where in (("mid", "step"), ("between", "epoch")):
        tr = trainer(name)
        calls = []

        def stop(*a, tr=tr, calls=calls):
            calls.append(a)
            if len(calls) == 6:  # after step 2 of epoch 2 (4 steps an epoch)
                tr.stop = True

        if where == "step":
            tr.on_step = stop
        else:
            tr.on_epoch = lambda row, tr=tr: setattr(tr, "stop", row["epoch"] == 1)
        assert tr.run()["interrupted"]
        saved = torch.load(tmp_path / name / "last.pt", weights_only=False)
        assert saved["ema"]["swapped"] is False and saved["partial"]["epoch"] == 1
        trainer(name).run(resume=True)
        got = torch.load(tmp_path / name / "last.pt", weights_only=False)
        assert all(torch.equal(got["state_dict"][k], v) for k, v in ref["state_dict"].items()), name
        assert all(torch.equal(got["ema"]["shadow"][k], v) for k, v in trained.items()), name


def test_resuming_with_ema_switched_on_or_off_continues_from_the_trained_weights(sample_dataset, tmp_path):
    """--ema added to, or dropped from, a resumed run: training goes on from the trained weights (not the
    average the last checkpoint's state_dict holds), and a new average starts from them."""
    from pcsym.training.train import Trainer, restore

    common = dict(data=str(sample_dataset), batch_size=8, seed=2, threads=1, epochs=1, max_steps=3, bn_batches=2)
    for ema_before, ema_after in ((0.8, 0.0), (0.0, 0.8)):
        out = tmp_path / f"run_{ema_before}"
        Trainer(ModelConfig(**TINY_MODEL), TrainConfig(out=str(out), ema=ema_before, **common)).run()
        last = torch.load(out / "last.pt", weights_only=False)
        tr = Trainer(ModelConfig(**TINY_MODEL), TrainConfig(out=str(out), ema=ema_after, **common))
        restore(out / "last.pt", tr.model, tr.optimizer, tr.scheduler, tr.ema)
        trained = last["ema"]["shadow"] if ema_before else last["state_dict"]
        params = dict(tr.model.named_parameters())
        assert all(torch.equal(params[n], w) for n, w in trained.items() if n in params)
        if ema_after:
            assert tr.ema.updates == 0 and all(torch.equal(s, p) for s, p in zip(tr.ema.shadow, tr.ema.params))
