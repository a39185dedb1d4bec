"""Every hyperparameter is a setting of ModelConfig or TrainConfig (issue 39), its default today's value,
and the code reads it from there: a config file changes it, an impossible value is refused."""

import json

import pytest
import torch

from pcsym.config import MAX_VERTICES, ModelConfig, TrainConfig, merge_settings
from pcsym.errors import PcsymError
from pcsym.models.groups import resolve
from pcsym.models.layers import ImplicitKernelConv, channel_types, channels_for
from pcsym.training.parts import make_schedule


def test_defaults_are_the_values_every_shipped_model_was_trained_with():
    t, m = TrainConfig(), ModelConfig()
    assert (t.warmup, t.lr_floor, t.step_factor, t.step_stages) == (0.1, 0.01, 0.5, 3)
    assert (t.momentum, t.jitter_clip, t.anisotropic_range) == (0.9, 0.05, (0.8, 1.25))
    assert (m.radial_max, m.basis_radius, m.basis_rings, m.basis_cutoff) == (2.5, 3.0, 3, 2.0)
    assert MAX_VERTICES == 2_000_000


def _rates(tcfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = make_schedule(tcfg, opt, steps_per_epoch)
    return [sched.lr_lambdas[0](s) for s in range(tcfg.epochs * steps_per_epoch)]


def test_the_schedule_reads_its_settings_from_the_config():
    plain = _rates(TrainConfig(epochs=10), 20)  # 200 steps: 20 of warm-up (a tenth, at most an epoch)
    assert plain[0] == pytest.approx(1 / 20) and plain[19] == 1.0 and plain[-1] == pytest.approx(0.01, abs=1e-3)
    tuned = _rates(TrainConfig(epochs=10, warmup=0.05, lr_floor=0.5), 20)
    assert tuned[0] == pytest.approx(1 / 10) and tuned[-1] == pytest.approx(0.5, abs=1e-3)
    step = _rates(TrainConfig(epochs=10, schedule="step", warmup=0, step_factor=0.1, step_stages=2), 20)
    assert step[0] == 1.0 and step[99] == 1.0 and step[100] == pytest.approx(0.1)


def test_a_config_file_sets_them_and_impossible_values_are_refused(tmp_path):
    # a dataset is named: merge_settings itself requires one unless resuming (issue 41)
    flags = {**ModelConfig().to_dict(), **TrainConfig().to_dict(), "out": str(tmp_path / "run"), "data": str(tmp_path)}
    cfg = tmp_path / "c.yaml"
    cfg.write_text("momentum: 0.5\nanisotropic_range: [0.9, 1.1]\nradial_max: 2.0\nbasis_rings: 4\n")
    m, t = merge_settings(flags, explicit=set(), config_file=cfg)
    assert (t.momentum, t.anisotropic_range, m.radial_max, m.basis_rings) == (0.5, (0.9, 1.1), 2.0, 4)
    for bad in ("momentum: 1.0", "warmup: -0.1", "step_stages: 0", "jitter_clip: -1"):
        cfg.write_text(bad + "\n")
        with pytest.raises(PcsymError, match="momentum must be in"):
            merge_settings(flags, explicit=set(), config_file=cfg)
    cfg.write_text("anisotropic_range: [1.2, 0.8]\n")
    with pytest.raises(PcsymError, match="anisotropic_range needs 0 < LOW <= HIGH, got '1.2,0.8'"):
        merge_settings(flags, explicit=set(), config_file=cfg)
    cfg.write_text("radial_max: 0\n")
    with pytest.raises(PcsymError, match="radial_max, basis_radius and basis_cutoff must be positive"):
        merge_settings(flags, explicit=set(), config_file=cfg)


def test_old_configs_read_with_todays_defaults():
    saved = {k: v for k, v in ModelConfig().to_dict().items() if k not in ("radial_max", "basis_rings")}
    assert ModelConfig.from_dict(json.loads(json.dumps(saved))).radial_max == 2.5


def test_the_implicit_kernel_takes_its_radial_range_from_the_config():
    group = resolve("o2")
    _, act, _ = channel_types(group, channels_for(group, 8))
    pre, _, _ = channel_types(group, channels_for(group, 8))
    conv = ImplicitKernelConv.from_config(group, act, pre, ModelConfig(group="o2", radial_max=2.0, n_radial=5))
    assert conv.embed.centres.max().item() == 2.0 and conv.embed.width == pytest.approx(0.5)
