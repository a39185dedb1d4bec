"""Outlier exposure (pcsym.training.outliers, ``pcsym train --outlier-exposure W``): chimeras are shapes of
one class with 40-60% of their points a ball of a shape of another class; the energy-bounded loss lowers
the outliers' log-sum-exp and raises the training shapes'; the flag trains, resumes and is validated;
``--init`` with the same classes keeps the model's head."""

import json

import torch
from typer.testing import CliRunner

from pcsym.cli import app
from pcsym.training.outliers import (IN_MARGIN, OUT_MARGIN, EnergyBoundedLoss, chimeras, outlier_generator)

from .conftest import SAMPLE

runner = CliRunner()
TINY = ["--points", "256", "--batch-size", "4", "--threads", "1", "--max-steps", "2", "--epochs", "1",
        "--widths", "8,16", "--k", "6", "--group", "m"]


def _batch(b=8, n=64):
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(b, n, 3, generator=g)
    nrm = torch.nn.functional.normalize(torch.randn(b, n, 3, generator=g), dim=-1)  # unique: they name points
    return pos, nrm, torch.arange(b) % 3


def test_chimeras_are_half_one_class_half_another():
    pos, nrm, y = _batch()
    out, out_n = chimeras(pos, nrm, y, outlier_generator(0, 1, 2))
    assert out.shape == (4, 64, 3) and out_n.shape == (4, 64, 3)
    flat = nrm.reshape(-1, 3)
    for r in range(len(out)):
        owner = torch.cdist(out_n[r], flat).argmin(1) // pos.shape[1]  # each point's source shape, by its normal
        shapes = owner.unique()
        assert len(shapes) == 2, shapes
        # the base shape's points stayed where they were (same index, same place); the other's moved in
        at_home = [bool(torch.equal(out_n[r][owner == s], nrm[s][owner == s])) for s in shapes.tolist()]
        assert sorted(at_home) == [False, True]
        base, other = (int(s) for s in (shapes[at_home.index(True)], shapes[at_home.index(False)]))
        assert torch.equal(out[r][owner == base], pos[base][owner == base])
        assert y[base] != y[other]  # never two shapes of one class
        share = float((owner == other).float().mean())
        assert 0.39 <= share <= 0.61, share
    # seeded: the same generator makes the same chimeras, another seed others
    again = chimeras(pos, nrm, y, outlier_generator(0, 1, 2))
    assert torch.equal(again[0], out) and not torch.equal(chimeras(pos, nrm, y, outlier_generator(0, 1, 3))[0], out)
    # a batch of one class has no chimera to give
    assert chimeras(pos, nrm, torch.zeros(8, dtype=torch.long), outlier_generator(0, 0, 0)) is None


def test_energy_bounded_loss_lowers_outliers_and_raises_training_shapes():
    x_in, x_out = torch.randn(16, 6, generator=torch.Generator().manual_seed(0)), None
    x_out = torch.randn(8, 6, generator=torch.Generator().manual_seed(1)) + 3.0
    y = torch.arange(16) % 4

    def trained(weight):
        torch.manual_seed(0)
        net = torch.nn.Linear(6, 4)
        with torch.no_grad():
            net.bias.fill_(5.0)  # every input starts near log-sum-exp 6.4: the outliers above their margin
        loss_fn = EnergyBoundedLoss(torch.nn.CrossEntropyLoss(), weight=weight)
        opt = torch.optim.SGD(net.parameters(), lr=0.02)
        for _ in range(300):
            opt.zero_grad()
            loss_fn(net(torch.cat([x_in, x_out])), y).backward()  # rows past len(y) are the outliers
            opt.step()
        return torch.logsumexp(net(x_in), 1).detach(), torch.logsumexp(net(x_out), 1).detach()

    lse_in, lse_out = trained(1.0)
    plain_in, plain_out = trained(0.0)  # the base loss alone
    assert lse_out.max() < OUT_MARGIN + 0.5 and lse_out.mean() < plain_out.mean() - 1.0
    assert lse_in.median() > IN_MARGIN - 0.5 and lse_in.min() > lse_out.max()
    # with no outlier rows and every training shape above its margin, it is the base loss alone
    loss_fn = EnergyBoundedLoss(torch.nn.CrossEntropyLoss(), weight=1.0)
    logits = torch.full((4, 4), 0.0)
    logits[torch.arange(4), torch.arange(4)] = IN_MARGIN + 5
    assert torch.equal(loss_fn(logits, torch.arange(4)), torch.nn.CrossEntropyLoss()(logits, torch.arange(4)))


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_outlier_exposure_trains_resumes_and_is_validated(tmp_path):
    data = SAMPLE / "modelnet10_mini"
    r = _invoke("-q", "train", "--data", data, "--out", tmp_path / "oe", "--outlier-exposure", "0.1", *TINY)
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "oe" / "config.json").read_text())
    assert cfg["train"]["outlier_exposure"] == 0.1
    r = _invoke("-q", "train", "--data", data, "--out", tmp_path / "oe", "--resume", "--epochs", "2")
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "oe" / "metrics.csv").read_text().strip().splitlines()) == 3
    r = _invoke("train", "--data", data, "--out", tmp_path / "bad", "--outlier-exposure", "-1")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--outlier-exposure" in r.stderr and not (tmp_path / "bad").exists()


def test_init_with_the_same_classes_keeps_the_head(tmp_path, sample_dataset):
    from pcsym.config import ModelConfig, TrainConfig
    from pcsym.training.parts import build_network

    r = _invoke("-q", "train", "--data", sample_dataset, "--out", tmp_path / "base", *TINY)
    assert r.exit_code == 0, r.output
    ckpt = torch.load(tmp_path / "base" / "last.pt", weights_only=True)
    mcfg = ModelConfig.from_dict(ckpt["model_config"])
    model = build_network(mcfg, TrainConfig(init=str(tmp_path / "base" / "last.pt")), torch.device("cpu"))
    assert torch.equal(model.state_dict()["head.out.weight"], ckpt["state_dict"]["head.out.weight"])
    # other classes: a fresh head of their number (tests/test_finetune.py trains that case)
    mcfg.class_names = list(mcfg.class_names[:2])
    model = build_network(mcfg, TrainConfig(init=str(tmp_path / "base" / "last.pt")), torch.device("cpu"))
    assert model.state_dict()["head.out.weight"].shape[0] == 2
