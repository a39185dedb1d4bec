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


@pytest.mark.parametrize("bad, message", [
    ("lmax: -1", "lmax (the degree of the kernel's harmonic embedding) must be between 0 and 4, got -1"),
    ("lmax: 9", "lmax (the degree of the kernel's harmonic embedding) must be between 0 and 4, got 9"),
    ("kernel_dims: 0", "kernel_dims must be at least 1, got 0"),
    ("kernel_layers: 0", "kernel_layers must be at least 1, got 0"),
    ("n_radial: 0", "n_radial must be at least 1, got 0"),
    ("invariant_dims: -8", "invariant_dims must be at least 1, got -8"),
    ("head_dims: 0", "head_dims must be at least 1, got 0"),
    ("dropout: 1.0", "dropout must be in [0, 1), got 1"),
    ("widths: '16,0'", "widths must all be at least 1, got 16,0"),
])
def test_the_sizes_only_a_config_file_sets_are_checked(tmp_path, bad, message):
    """Before: lmax -1 was an IndexError deep in the embedding, lmax 9 a long escnn build, kernel_dims 0 silently
    one channel; now each is refused by name, before any data is read."""
    flags = {**ModelConfig().to_dict(), **TrainConfig().to_dict(), "out": str(tmp_path / "run"), "data": str(tmp_path)}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(bad + "\n")
    with pytest.raises(PcsymError) as err:
        merge_settings(flags, explicit=set(), config_file=cfg)
    assert str(err.value) == message


def test_an_lmax_so3_cannot_read_is_noted_and_changes_nothing():
    """Under so3 a degree-l harmonic is an irrep of degree l; the kernel MLP's hidden fields stop at the band
    limit, so lmax above it is the same model: the same weights, and with the same values the same logits. Under
    O(2) the same lmax reaches hidden fields (more weights), so it is no note there."""
    from pcsym.config import model_notes
    from pcsym.models.classifier import build_model, count_parameters

    assert model_notes(ModelConfig(group="so3", max_freq=2, lmax=3)) == [
        "lmax 3 adds nothing under so3 at max-freq 2: harmonics above degree 2 reach no hidden field of the kernel "
        "MLP (raise --max-freq to use them)"]
    assert model_notes(ModelConfig(group="o3", lmax=4))[0].startswith("lmax 4 adds nothing under o3 at max-freq 1")
    for quiet in (ModelConfig(group="so3"), ModelConfig(group="so3", max_freq=3, lmax=3),
                  ModelConfig(group="o2", lmax=3), ModelConfig(group="so3", lmax=3, kernel="basis")):
        assert model_notes(quiet) == []
    small = dict(points=128, widths=(8,), strides=(4,), invariant_dims=8, head_dims=8, class_names=["a", "b"])
    models = {}
    for group, lmax in (("so3", 1), ("so3", 3), ("o2", 1), ("o2", 3)):
        torch.manual_seed(0)
        models[group, lmax] = build_model(ModelConfig(group=group, max_freq=1, lmax=lmax, **small)).eval()
    assert count_parameters(models["so3", 1]) == count_parameters(models["so3", 3])
    assert count_parameters(models["o2", 3]) > count_parameters(models["o2", 1])
    pos = torch.randn(2, 128, 3, dtype=torch.float64)  # float64: equal to rounding, not to float32's sums
    with torch.no_grad():  # the same weights (their initial draws differ; norms start alike)
        for (n1, w1), (n3, w3) in zip(models["so3", 1].named_parameters(), models["so3", 3].named_parameters()):
            assert (n1, w1.shape) == (n3, w3.shape)
            w3.copy_(w1)
        a, b = models["so3", 3].double()(pos), models["so3", 1].double()(pos)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
