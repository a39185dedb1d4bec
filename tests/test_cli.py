"""The commands as a user runs them: exit codes, messages, files written."""

import csv
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pcsym.cli import app

from .conftest import SAMPLE

runner = CliRunner()
MINI = SAMPLE / "modelnet10_mini"
TINY = ["--points", "256", "--widths", "16,32", "--batch-size", "8", "--threads", "1"]
PCSYM = [sys.executable, "-m", "pcsym"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, sample_dataset):
    out = tmp_path_factory.mktemp("run") / "so3"
    r = run("-q", "train", "--data", sample_dataset, "--out", out, "--group", "so3", "--epochs", "2",
            "--max-steps", "3", *TINY)
    assert r.exit_code == 0, r.output
    return out


def test_version_and_help():
    r = run("--version")
    assert r.exit_code == 0 and r.stdout.startswith("pcsym ")
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("groups", "train", "evaluate", "classify", "check-equivariance", "export", "data"):
        assert cmd in r.stdout


def test_every_command_the_package_names_exists():
    """Messages and docstrings that tell the user to run `pcsym X Y` name real commands (a message
    once pointed to `pcsym prepare`, which is `pcsym data prepare`)."""
    import re

    import typer.main

    root = typer.main.get_command(app)
    package = Path(__file__).resolve().parents[1] / "pcsym"
    named = set()
    for src in package.rglob("*.py"):
        named |= set(re.findall(r"`pcsym ((?:[a-z][a-z-]*)(?: [a-z][a-z-]*)*)", src.read_text()))
    assert "data prepare" in named and "classify" in named
    for words in sorted(named):
        cmd = root
        for word in words.split():
            if not hasattr(cmd, "commands"):
                break  # the rest are arguments (`pcsym train --data DIR ...`)
            sub = cmd.commands.get(word)
            assert sub is not None, f"`pcsym {words}`: no command {word!r}"
            cmd = sub


def test_help_imports_no_heavy_modules_and_bad_flags_exit_2():
    """The fast --help is a design property, pinned here without timing it: no torch, escnn, open3d,
    and none of rich's markdown stack (Typer's rich help formatter) is imported to print help."""
    code = ("import sys\nfrom pcsym.cli import main\nsys.argv = ['pcsym', '--help']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "heavy = [m for m in ('torch', 'escnn', 'open3d', 'numpy', 'rich.markdown', 'typer.rich_utils')"
            " if m in sys.modules]\nassert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Commands:" in proc.stdout and "classify" in proc.stdout
    r = run("train", "--nope")
    assert r.exit_code == 2 and "No such option: --nope" in r.output


def test_groups_table_and_json():
    r = run("groups")
    assert r.exit_code == 0
    for name in ("trivial", "so2", "o2", "so3", "o3", "m", "f", "inv", "so2xinv", "o2xinv", "mxinv", "c4", "d4"):
        assert f" {name} " in r.stdout
    rows = json.loads(run("groups", "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["o2"]["order"] == "continuous" and by_name["d4"]["order"] == 8
    assert by_name["so3"]["default_max_freq"] == 1 and by_name["m"]["default_max_freq"] is None
    assert by_name["m"]["escnn"] == "escnn.gspaces.mirOnR3()"


def test_train_writes_checkpoints_metrics_and_config(tiny_run):
    assert {"best.pt", "last.pt", "metrics.csv", "config.json", "learning_curve.png"} <= {
        p.name for p in tiny_run.iterdir()}
    lines = (tiny_run / "metrics.csv").read_text().strip().splitlines()
    assert lines[0].startswith("epoch,train_loss,train_acc,val_acc") and len(lines) == 3
    rows = list(csv.DictReader(lines))
    assert all(0 < float(r["cpu_seconds"]) and 0 < float(r["epoch_seconds"]) for r in rows)
    ckpt = torch.load(tiny_run / "last.pt", weights_only=True)  # loads without executing anything
    assert ckpt["model_config"]["group"] == "so3" and ckpt["model_config"]["points"] == 256
    assert ckpt["model_config"]["class_names"][0] == "bathtub"


def test_train_refuses_non_empty_out_without_resume_or_force(tiny_run):
    r = run("train", "--data", MINI, "--out", tiny_run, *TINY)
    assert r.exit_code == 2
    assert "not empty" in r.stderr and "--resume" in r.stderr and "Traceback" not in r.output


def test_resume_with_only_out_continues_with_the_runs_own_settings(tmp_path, sample_dataset):
    out = tmp_path / "run"
    r = run("-q", "train", "--data", sample_dataset, "--out", out, "--group", "m", "--epochs", "1",
            "--max-steps", "2", "--schedule", "step", *TINY)
    assert r.exit_code == 0, r.output
    r = run("-q", "train", "--data", sample_dataset, "--out", out, "--resume", "--epochs", "2")  # no model flags
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "config.json").read_text())
    assert (saved["model"]["group"], saved["model"]["widths"], saved["model"]["points"]) == ("m", [16, 32], 256)
    assert (saved["train"]["epochs"], saved["train"]["schedule"], saved["train"]["max_steps"]) == (2, "step", 2)
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 3


def test_unknown_group_suggests_the_closest():
    r = run("train", "--data", MINI, "--out", "unused", "--group", "so33")
    assert r.exit_code == 2
    assert "unknown group 'so33'" in r.stderr and "Did you mean 'so3'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_evaluate_reports_metrics(tiny_run, sample_dataset, tmp_path):
    r = run("evaluate", tiny_run / "best.pt", "--data", sample_dataset, "--json", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["n"] == 60  # 20% of the 300 sample shapes
    assert sum(map(sum, m["confusion_matrix"])) == 60
    assert 0.0 <= m["overall_accuracy"] <= 1.0 and len(m["per_class_accuracy"]) == 10
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "confusion.csv").exists()
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run("evaluate", tiny_run, "--data", sample_dataset, "--rotate", "so3")
    assert r.exit_code == 0 and "overall accuracy" in r.stdout and "confusion matrix" in r.stdout


def test_evaluate_bad_rotate_flag(tiny_run):
    r = run("evaluate", tiny_run, "--data", MINI, "--rotate", "x")
    assert r.exit_code == 2 and "unknown --rotate 'x'" in r.stderr


def test_evaluate_with_another_downsampling(tiny_run, sample_dataset):
    """--sampling scores the same weights with another downsampling scheme (and says which)."""
    own = json.loads(run("evaluate", tiny_run, "--data", sample_dataset, "--json").stdout)
    r = run("evaluate", tiny_run, "--data", sample_dataset, "--json", "--sampling", "random-fps")
    assert r.exit_code == 0, r.output
    other = json.loads(r.stdout)
    assert (own["sampling"], other["sampling"]) == ("random", "random-fps") and other["n"] == own["n"]
    r = run("evaluate", tiny_run, "--data", MINI, "--sampling", "fsp")
    assert r.exit_code == 2 and "unknown --sampling 'fsp': use random, fps or random-fps" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_classify_with_checkpoint(tiny_run, sample_mesh):
    r = run("classify", sample_mesh, "--model", tiny_run / "best.pt", "--top-k", "3", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"][0]
    assert res["ok"] and len(res["top"]) == 3
    probs = [t["probability"] for t in res["top"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0001


def test_classify_shipped_model_out_of_the_box(sample_mesh):
    r = run("classify", sample_mesh)
    assert r.exit_code == 0, r.output
    assert "probability" in r.stdout and "bed" in r.stdout


def test_classify_shipped_model_runs_without_torch_and_matches_its_checkpoint(sample_mesh, tmp_path):
    """The shipped models' numpy exports give classify its fast cold start (no torch, no escnn), for
    meshes and for clouds without normals (estimated in numpy); the answer must be the checkpoint's."""
    import numpy as np

    from pcsym.models.checkpoint import resolve_checkpoint
    from pcsym.data.meshes import load_cloud

    code = ("import sys\nfrom pcsym.cli import main\n"
            "sys.argv = ['pcsym', 'classify', sys.argv[1], '--json', '--votes', '3']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "heavy = [m for m in ('torch', 'escnn', 'open3d') if m in sys.modules]\nassert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code, str(sample_mesh)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    fast = json.loads(proc.stdout)["results"][0]["top"]
    np.savetxt(tmp_path / "bed.xyz", load_cloud(sample_mesh, 3000)[0])  # a bare cloud: normals estimated
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "bed.xyz")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout)["results"][0]["top"][0]["class"] == "bed", proc.stderr
    r = run("classify", sample_mesh, "--model", resolve_checkpoint("so3"), "--json", "--votes", "3")  # via escnn
    slow = json.loads(r.stdout)["results"][0]["top"]
    assert [t["class"] for t in fast] == [t["class"] for t in slow] and fast[0]["class"] == "bed"
    assert max(abs(a["probability"] - b["probability"]) for a, b in zip(fast, slow)) < 1e-3
    single = json.loads(run("classify", sample_mesh, "--json").stdout)["results"][0]["top"]
    assert single != fast  # the votes really averaged other downsamplings
    r = run("classify", sample_mesh, "--votes", "9")
    assert r.exit_code == 2 and "--votes must be between 1 and 8" in r.stderr


def test_classify_missing_file_is_one_line_exit_2(tmp_path, tiny_run):
    r = run("classify", tmp_path / "nope.obj", "--model", tiny_run)
    assert r.exit_code == 2
    assert "nope.obj" in r.stderr and "Traceback" not in r.output


def test_classify_keeps_going_after_a_bad_file(tmp_path, tiny_run, sample_mesh):
    bad = tmp_path / "broken.stl"
    bad.write_bytes(b"\x00" * 90)
    r = run("classify", sample_mesh, bad, "--model", tiny_run, "--json")
    assert r.exit_code == 2
    results = json.loads(r.stdout)["results"]
    assert [x["ok"] for x in results] == [True, False]
    assert "broken.stl" in r.stderr


def test_check_equivariance_passes_on_trained_checkpoint(tiny_run):
    r = run("check-equivariance", tiny_run / "best.pt", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["passed"]
    inside = [x for x in rep["rows"] if x["in_group"]]
    outside = [x for x in rep["rows"] if not x["in_group"]]
    assert inside and max(x["worst_rel"] for x in inside) < 1e-6  # escnn bases are stored in float32
    assert outside and max(x["logits_rel"] for x in outside) > 1e-3  # e.g. inversion, stretch


def test_check_equivariance_fresh_model_by_group():
    r = run("check-equivariance", "--group", "m", "--points", "256")
    assert r.exit_code == 0, r.output
    assert "PASS" in r.stdout
    rep = json.loads(run("check-equivariance", "--group", "m", "--points", "256", "--json").stdout)
    outside = {x["element"]: x["logits_rel"] for x in rep["rows"] if not x["in_group"]}
    assert outside["rotation 0.9 rad about x"] > 1e-3  # not a symmetry of M: logits change


def test_check_equivariance_fails_with_exit_1_on_a_broken_model(tiny_run, tmp_path):
    """Corrupt the stored equivariant basis of one layer: the model is no longer equivariant."""
    ckpt = torch.load(tiny_run / "best.pt", weights_only=True)
    keys = [k for k in ckpt["state_dict"] if "blocks.1.conv.contract" in k and "sampled_basis" in k]
    assert keys
    g = torch.Generator().manual_seed(0)
    for k in keys:
        ckpt["state_dict"][k] = ckpt["state_dict"][k] + 0.5 * torch.randn(ckpt["state_dict"][k].shape, generator=g)
    torch.save(ckpt, tmp_path / "broken.pt")
    r = run("check-equivariance", tmp_path / "broken.pt")
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.stdout


def test_malicious_checkpoint_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "pcsym-checkpoint", "payload": Evil()}, path)
    for cmd in (["classify", SAMPLE / "meshes" / "bed_0001.off", "--model", path], ["evaluate", path, "--data", MINI],
                ["check-equivariance", path], ["export", path]):
        r = run(*cmd)
        assert r.exit_code == 2, (cmd, r.output)
        assert "refusing to load" in r.stderr
    assert not marker.exists()


def test_garbage_and_foreign_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    r = run("evaluate", tmp_path / "junk.pt", "--data", MINI)
    assert r.exit_code == 2 and "not a readable checkpoint" in r.stderr
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    r = run("evaluate", tmp_path / "foreign.pt", "--data", MINI)
    assert r.exit_code == 2 and "not a pcsym checkpoint" in r.stderr


def test_export_torchscript_onnx_and_numpy_give_the_same_logits(tiny_run, tmp_path, sample_mesh):
    import numpy as np

    from pcsym.models.checkpoint import load_model
    from pcsym.inference.export import ScriptedClassifier, prepare_inputs
    from pcsym.data.meshes import load_cloud

    assert run("export", tiny_run, "--out", tmp_path / "m.ts").exit_code == 0
    assert run("export", tiny_run, "--format", "onnx", "--out", tmp_path / "m.onnx").exit_code == 0
    assert run("export", tiny_run, "--format", "numpy", "--out", tmp_path / "m.npz").exit_code == 0
    model, _ = load_model(tiny_run)
    p, n = load_cloud(sample_mesh, 256)
    p, n = torch.tensor(p)[None], torch.tensor(n)[None]
    with torch.no_grad():
        ref = model(p, n)
    assert torch.allclose(ScriptedClassifier(tmp_path / "m.ts")(p, n), ref, atol=1e-5)
    import onnxruntime as ort

    pp, nn_ = prepare_inputs(p, n, model.cfg)
    out = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"pos": pp.numpy(), "normals": nn_.numpy()})[0]
    assert np.abs(out - ref.numpy()).max() < 1e-4
    from pcsym.inference.runtime import NumpyClassifier

    assert np.abs(NumpyClassifier(tmp_path / "m.npz")(p.numpy(), n.numpy()) - ref.numpy()).max() < 1e-4
    answers = []
    for ext in ("ts", "npz"):
        r = run("classify", sample_mesh, "--model", tmp_path / f"m.{ext}", "--json")
        assert r.exit_code == 0, r.output
        answers.append(json.loads(r.stdout)["results"][0]["top"])
        # an export saved under another name loads as what it is, not as a torch checkpoint
        shutil.copy(tmp_path / f"m.{ext}", tmp_path / f"m_{ext}.bin")
        r = run("classify", sample_mesh, "--model", tmp_path / f"m_{ext}.bin", "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["results"][0]["top"] == answers[-1]
    r = run("export", tiny_run, "--format", "tflite")
    assert r.exit_code == 2 and "unknown --format 'tflite': use torchscript, onnx or numpy" in r.stderr
    (tmp_path / "junk.npz").write_bytes(b"PK not really a zip")
    r = run("classify", sample_mesh, "--model", tmp_path / "junk.npz")
    assert r.exit_code == 2 and "not a readable numpy export" in r.stderr and "Traceback" not in r.output


def test_config_file_with_flag_override(tmp_path, sample_dataset):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("group: m\nepochs: 1\nmax_steps: 2\npoints: 256\nwidths: '16'\nbatch_size: 8\n"
                   "schedule: step\npoint_dropout: 0.3\nmax_freq: 2\n")
    out = tmp_path / "run"
    r = run("-q", "train", "--config", cfg, "--data", sample_dataset, "--out", out, "--group", "inv",
            "--anisotropic-scale", "--scale", "0.9,1.1", "--jitter", "0", "--eval-rotate", "so3", "--ema", "0.9")
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["group"] == "inv"  # the flag wins
    assert saved["train"]["epochs"] == 1 and saved["model"]["points"] == 256  # from the file
    assert saved["model"]["max_freq"] == 2
    t = saved["train"]
    assert (t["schedule"], t["point_dropout"], t["anisotropic_scale"]) == ("step", 0.3, True)
    assert (t["scale"], t["jitter"], t["eval_rotate"], t["ema"]) == ([0.9, 1.1], 0.0, "so3", 0.9)
    assert torch.load(out / "last.pt", weights_only=True)["ema"]["updates"] == 2
    for bad_flag, msg in ((["--schedule", "linear"], "unknown --schedule 'linear'"),
                          (["--scale", "1.2,0.8"], "--scale needs 0 < LOW <= HIGH"),
                          (["--eval-rotate", "x"], "unknown --eval-rotate 'x'"),
                          (["--max-freq", "9"], "--max-freq must be between 0 and 4, got 9")):
        r = run("train", "--data", sample_dataset, "--out", tmp_path / "y", *bad_flag)
        assert r.exit_code == 2 and msg in r.stderr, r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("colour: red\n")
    r = run("train", "--config", bad, "--data", sample_dataset, "--out", tmp_path / "x")
    assert r.exit_code == 2 and "unknown setting 'colour'" in r.stderr
    bad.write_text("lmax: -1\n")  # was an IndexError traceback from the harmonic embedding
    r = run("train", "--config", bad, "--data", sample_dataset, "--out", tmp_path / "x")
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        "error: lmax (the degree of the kernel's harmonic embedding) must be between 0 and 4, got -1"], r.output
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- never lose work

RESUME_ARGS = ["--group", "so3", "--epochs", "3", "--max-steps", "6", *TINY, "--seed", "3"]


def _train_proc(data, out, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([*PCSYM, "-q", "train", "--data", str(data), "--out", str(out), *RESUME_ARGS, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def _wait_for_epochs(out: Path, n: int, proc, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        m = out / "metrics.csv"
        if m.exists() and len(m.read_text().strip().splitlines()) >= n + 1:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("timeout")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, sample_dataset):
    out = tmp_path_factory.mktemp("ref") / "run"
    p = _train_proc(sample_dataset, out)
    assert p.wait(300) == 0, p.communicate()
    return out


def _same_weights(a: Path, b: Path):
    sa = torch.load(a, weights_only=True)["state_dict"]
    sb = torch.load(b, weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_resume_after_sigkill_equals_uninterrupted_run(reference_run, sample_dataset, tmp_path):
    out = tmp_path / "run"
    p = _train_proc(sample_dataset, out)
    _wait_for_epochs(out, 1, p)
    time.sleep(0.3)  # in the middle of epoch 2
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (out / "last.pt").exists()
    r = subprocess.run([*PCSYM, "-q", "train", "--data", str(sample_dataset), "--out", str(out), *RESUME_ARGS,
                        "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    _same_weights(out / "last.pt", reference_run / "last.pt")
    assert (out / "metrics.csv").read_text().count("\n") == 4


def test_ctrl_c_saves_mid_epoch_and_resume_is_exact(reference_run, sample_dataset, tmp_path):
    out = tmp_path / "run"
    p = _train_proc(sample_dataset, out)
    _wait_for_epochs(out, 1, p)
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.skip("training finished before the signal arrived (machine too fast)")
    assert p.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    r = subprocess.run([*PCSYM, "-q", "train", "--data", str(sample_dataset), "--out", str(out), *RESUME_ARGS,
                        "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    _same_weights(out / "last.pt", reference_run / "last.pt")


def test_json_stdout_is_clean_in_a_real_process(tiny_run, sample_mesh):
    """escnn prints on import of some groups; --json output must still parse."""
    r = subprocess.run([*PCSYM, "check-equivariance", "--group", "o2", "--points", "128", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["group"] == "o2"
    r = subprocess.run([*PCSYM, "classify", str(sample_mesh), "--model", str(tiny_run), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert json.loads(r.stdout)["results"][0]["ok"]


def test_data_fetch_cli_checksum_and_extraction(tmp_path):
    import hashlib
    import zipfile

    archive = tmp_path / "src" / "tiny.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("tiny/shape_names.txt", "a\n")
    good = hashlib.sha256(archive.read_bytes()).hexdigest()
    out = tmp_path / "dl"
    r = run("-q", "data", "fetch", archive.as_uri(), "--out", out, "--sha256", "0" * 64)
    assert r.exit_code == 2 and "checksum mismatch" in r.stderr
    assert not list(out.rglob("*.part")) and not (out / "tiny.zip").exists()
    r = run("-q", "data", "fetch", archive.as_uri(), "--out", out, "--sha256", good)
    assert r.exit_code == 0, r.output
    assert (out / "tiny" / "shape_names.txt").read_text() == "a\n"
    r = run("data", "fetch", "modelnet40_hdf5", "--out", out)
    assert r.exit_code == 2 and "modelnet40_ply_hdf5_2048" in r.stderr


def test_global_flags_reach_the_command(tmp_path):
    """--quiet and --debug reach the command; --debug shows the traceback of an error."""
    import typer

    from pcsym.cli.common import GlobalOptions, options

    seen = {}

    @app.command("probe-options", hidden=True)
    def _probe(ctx: typer.Context):
        seen["opts"] = options(ctx)

    try:
        assert run("--quiet", "--debug", "probe-options").exit_code == 0
        assert seen["opts"] == GlobalOptions(debug=True, quiet=True)
        assert run("probe-options").exit_code == 0 and seen["opts"] == GlobalOptions()
    finally:
        app.registered_commands[:] = [c for c in app.registered_commands if c.name != "probe-options"]
    r = run("--debug", "evaluate", tmp_path / "missing.pt", "--data", MINI)
    assert r.exit_code != 0 and "checkpoint not found" in str(r.exception)
    r = run("evaluate", tmp_path / "missing.pt", "--data", MINI)
    assert r.exit_code == 2 and "checkpoint not found" in r.stderr and r.exception is None or \
        isinstance(r.exception, SystemExit)


def test_train_refuses_bad_accuracy_lever_flags(tmp_path):
    for args, msg in ((["--balance", "yes"], "unknown --balance 'yes': use none, loss or sampler"),
                      (["--optimizer", "adam"], "unknown --optimizer 'adam': use adamw or sgd"),
                      (["--edge-features", "ppf", "--kernel", "basis"],
                       "edge features 'ppf' need the implicit kernel and normals"),
                      (["--depth", "1,2"], "depth must be one count of steerable blocks per stage (or one for all), "
                                           "each at least 1, got 1,2"),
                      (["--depth", "0"], "each at least 1, got 0"),
                      (["--depth", "two"], "--depth must be comma-separated numbers, got 'two'")):
        out = tmp_path / "never"
        r = run("train", "--data", MINI, "--out", out, *args)
        assert r.exit_code == 2 and msg in r.stderr, (args, r.output)
        assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_evaluate_feeds_estimated_normals_to_a_model_trained_on_them(tiny_run, sample_dataset, tmp_path):
    """tiny_run learned on PCA normals (the sample h5 has none). Scored on a copy of its data whose own
    normals are random directions, it is fed PCA normals again and scores as on the original; a copy of
    the model that says it learned on the data's own normals gets the random ones and scores otherwise."""
    import numpy as np

    with np.load(sample_dataset) as z:
        arrays = dict(z)
    noise = np.random.default_rng(0).normal(size=arrays["normals"].shape).astype(np.float32)
    arrays.update(normals=noise / np.linalg.norm(noise, axis=-1, keepdims=True), normals_estimated=np.array(False))
    np.savez(tmp_path / "given.npz", **arrays)
    ckpt = torch.load(tiny_run / "best.pt", weights_only=True)
    assert ckpt["model_config"]["estimated_normals"] == 1024
    ckpt["model_config"]["estimated_normals"] = 0
    torch.save(ckpt, tmp_path / "given_normals_model.pt")

    def score(model, data):
        r = run("evaluate", model, "--data", data, "--json")
        assert r.exit_code == 0, r.output
        m = json.loads(r.stdout)
        return m["confusion_matrix"], m["unknown"]["mean_score"]

    own, given = score(tiny_run, sample_dataset), score(tiny_run, tmp_path / "given.npz")
    assert given[0] == own[0] and abs(given[1] - own[1]) < 1e-4
    assert abs(score(tmp_path / "given_normals_model.pt", tmp_path / "given.npz")[1] - own[1]) > 1e-3


def _h5_test_folder(folder: Path, names: list[str], points, labels) -> Path:
    import h5py

    folder.mkdir()
    with h5py.File(folder / "ply_data_test0.h5", "w") as f:
        f["data"], f["label"] = points, labels.reshape(-1, 1).astype("uint8")
    (folder / "shape_names.txt").write_text("\n".join(names) + "\n")
    (folder / "test_files.txt").write_text(f"data/{folder.name}/ply_data_test0.h5\n")
    return folder


def test_evaluate_a_model_on_data_with_some_of_its_classes(tmp_path):
    """A model scores a dataset whose classes are some of its own (ModelNet10 data for a ModelNet40 model),
    matched by name in the data's order: each shape's answer is the likeliest of the data's classes. Classes
    it does not know: one line, exit 2 (bad input)."""
    import h5py
    import numpy as np

    from pcsym.training.evaluate import evaluate_checkpoint

    with h5py.File(MINI / "ply_data_train0.h5") as f:
        points, labels = f["data"][:], f["label"][:].ravel()
    names = (MINI / "shape_names.txt").read_text().split()
    full = _h5_test_folder(tmp_path / "full", names, points, labels)
    some = ["sofa", "bed", "chair"]  # another order than the model's
    keep = np.isin(labels, [names.index(n) for n in some])
    sub_labels = np.array([some.index(names[c]) for c in labels[keep]])
    sub = _h5_test_folder(tmp_path / "some", some, points[keep], sub_labels)

    probs = np.array(evaluate_checkpoint("so3-mn10", full, logits=True)["probabilities"])[keep]
    expected = np.array([[names.index(n) for n in some][i] for i in probs[:, [names.index(n) for n in some]].argmax(1)])
    r = run("evaluate", "so3-mn10", "--data", sub, "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["class_names"] == some and m["model_classes"] == 10 and m["n"] == int(keep.sum())
    assert m["overall_accuracy"] == pytest.approx(float(np.mean(expected == labels[keep])))
    want = np.zeros((3, 3), int)
    for t, pr in zip(labels[keep], expected):
        want[some.index(names[t]), [names.index(n) for n in some].index(pr)] += 1
    assert m["confusion_matrix"] == want.tolist()
    assert "scored on the data's 3 classes, matched by name" in run("evaluate", "so3-mn10", "--data", sub).stdout

    odd = _h5_test_folder(tmp_path / "odd", ["sofa", "teapot"], points[:4], np.array([0, 1, 0, 1]))
    r = run("evaluate", "so3-mn10", "--data", odd)
    assert r.exit_code == 2
    assert r.stderr.strip() == (f"error: {odd}: the dataset has classes the model was not trained on ('teapot'); "
                                "it knows 10 classes")
