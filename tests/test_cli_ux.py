"""Issue 41, the command line a careful user expects: resume that explains itself, output that survives
a pipe, errors that name the flag. Each test runs the commands as the issue shows them: exit code, the
exact line, nothing cut when stdout is not a terminal."""

import io
import json
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from pcsym.cli import app

from .conftest import ROOT, SAMPLE

runner = CliRunner()
MINI = SAMPLE / "modelnet10_mini"
BED = "sample_data/meshes/bed_0001.off"  # as the README shows it: relative to the project root
TINY = ["--points", "256", "--widths", "16,32", "--batch-size", "8", "--threads", "1", "--max-steps", "2"]
PCSYM = [sys.executable, "-m", "pcsym"]
SCI = re.compile(r"\d\.\de[+-]\d\d")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def only_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def o2_run(tmp_path_factory, sample_dataset):
    """`pcsym train --data ... --out run --group o2 --epochs 1 --points 256 --max-steps N`, quiet given after
    the command."""
    out = tmp_path_factory.mktemp("issue41") / "run"
    r = run("train", "--data", sample_dataset, "--out", out, "--group", "o2", "--epochs", "1", *TINY, "-q")
    assert r.exit_code == 0, r.output
    assert "epoch 1/1" not in r.stderr  # -q after the command hid the progress
    return out


# ----------------------------------------------------------------------------- training runs


@pytest.mark.parametrize("flag, theirs", [
    (["--group", "so3"], "group=o2"), (["--widths", "16,32,64"], "widths=16,32"), (["--k", "16"], "k=10"),
    (["--max-freq", "1"], "max_freq=default"), (["--depth", "2"], "depth=1"), (["--kernel", "basis"], "kernel=implicit"),
    (["--edge-features", "ppf"], "edge_features=none"), (["--no-positions"], "use_positions=on"),
    (["--sampling", "fps"], "sampling=random")])
def test_resume_with_another_model_setting_names_the_flag_and_the_runs_value(o2_run, sample_dataset, flag, theirs):
    before = (o2_run / "last.pt").read_bytes(), (o2_run / "config.json").read_text()
    r = run("train", "--data", sample_dataset, "--out", o2_run, "--resume", *flag)
    assert r.exit_code == 2, r.output
    shown = {"--no-positions": "--positions off"}.get(flag[0], " ".join(flag))
    assert only_line(r) == (f"error: {shown} differs from the run in {o2_run}/, whose model has {theirs}; drop it "
                            "to resume the run (or start a new run with --force)")
    assert ((o2_run / "last.pt").read_bytes(), (o2_run / "config.json").read_text()) == before


def test_resume_takes_the_runs_data_counts_true_epochs_records_changes_and_says_when_complete(o2_run, sample_dataset,
                                                                                             tmp_path):
    out = tmp_path / "run"
    shutil.copytree(o2_run, out)
    r = run("train", "--out", out, "--resume", "--epochs", "2", "--points", "512")  # no --data
    assert r.exit_code == 0, r.output
    err = r.stderr.splitlines()
    assert err[0] == f"note: --points 512 differs from the run's 256; continuing with 512 (recorded in {out}/config.json)"
    assert "epoch 2/2" in r.stderr and "epoch 1/2" not in r.stderr  # the epoch it trains, not a count from 1
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["data"] == str(sample_dataset) and saved["model"]["points"] == 512
    assert saved["changes"] == [{"setting": "points", "from": 256, "to": 512, "from_epoch": 2}]
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 3
    last = (out / "last.pt").read_bytes()

    r = run("train", "--out", out, "--resume")
    assert r.exit_code == 0 and only_line(r) == "run already complete (2/2 epochs); raise --epochs to continue"
    assert r.stdout == "" and (out / "last.pt").read_bytes() == last
    r = run("train", "--out", out, "--resume", "--epochs", "1")
    assert r.exit_code == 2
    assert only_line(r) == f"error: {out}: --epochs 1 is fewer than the 2 epochs the run has finished; raise --epochs " \
                           "to continue it"
    r = run("train", "--out", out, "--resume", "--force")
    assert r.exit_code == 2
    assert only_line(r) == "error: --resume continues the run in --out, --force starts it anew: give one of them"


def test_train_without_data_or_without_a_run_to_resume(tmp_path):
    r = run("train", "--out", tmp_path / "new")
    assert r.exit_code == 2
    assert only_line(r) == "error: missing --data: the dataset to train on (a folder or a cache .npz)"
    r = run("train", "--out", tmp_path / "new", "--resume")
    assert r.exit_code == 2
    assert only_line(r) == f"error: {tmp_path / 'new'}: nothing to resume: no last.pt (start the run without --resume)"
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- output


def test_check_equivariance_piped_keeps_every_number_and_names_each_element(o2_run):
    """`pcsym check-equivariance so3 | cat`: full numbers and element names, three distinct rows."""
    proc = subprocess.run([*PCSYM, "check-equivariance", "so3"], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env={**__import__("os").environ, "COLUMNS": "60"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "…" not in out
    rows = [ln for ln in out.splitlines() if re.match(r"│ (test|random)\d", ln)]
    labels = [ln.split("│")[1].strip() for ln in rows]
    assert labels[:3] == ["test1: rotation 180° about x", "test2: rotation 180° about y",
                          "test3: rotation 180° about z"]
    assert len(set(labels)) == len(labels) and labels[3].startswith("random1: rotation ")
    for ln in rows:  # logits abs, logits rel and one error per layer, each whole
        assert len(SCI.findall(ln)) >= 4, ln
    # a checkpoint's rows are numbered the same way, from 1
    rep = json.loads(run("check-equivariance", o2_run / "best.pt", "--json").stdout)
    inside = [x["element"] for x in rep["rows"] if x["in_group"]]
    assert [e.split(":")[0] for e in inside] == ["test1", "test2", "test3", "random1", "random2", "random3"]
    assert inside[1] == "test2: mirror x -> -x" and len(set(inside)) == len(inside)


def test_tables_fold_rather_than_cut_in_a_narrow_terminal():
    from rich.console import Console

    from pcsym.cli.common import column, print_table, table

    buf = io.StringIO()
    con = Console(file=buf, width=30, force_terminal=True, color_system=None, soft_wrap=True)
    t = table("equivariance of a so3/implicit model")
    column(t, "element")
    for name in ("logits abs", "logits rel", "block0", "block1"):
        column(t, name, "right")
    t.add_row("test1: rotation 180° about x", "3.2e-07", "1.1e-06", "4.4e-08", "2.5e-07")
    print_table(con, t)
    out = buf.getvalue()
    assert "…" not in out and all(n in out for n in ("3.2e-07", "1.1e-06", "4.4e-08", "2.5e-07"))
    first = "".join(ln.split("│")[1] for ln in out.splitlines() if ln.startswith("│"))
    assert first.split() == ["test1:", "rotation", "180°", "about", "x"]  # wrapped between words, never cut
    r = runner.invoke(app, ["groups"], env={"COLUMNS": "40"})  # not a terminal: as wide as the table
    assert r.exit_code == 0 and "…" not in r.stdout
    assert "escnn.gspaces.dihedralOnR3(n=1, axis=0.0)" in r.stdout and "rotations about z + mirror planes containing z" \
        in r.stdout


def test_classify_rows_show_paths_as_given_and_round_alike(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(ROOT / BED, broken / "bed.off")
    (broken / "cut.off").write_text("OFF\n3 1 0\n0 0\n")
    r = run("classify", "sample_data/meshes", broken)  # no folder in common below /
    assert r.exit_code == 2
    lines = r.stdout.splitlines()
    assert lines[0].strip() == "5 files" and "files in" not in r.stdout
    files = [ln.split("│")[1].strip() for ln in lines if ln.startswith("│")]
    assert files == ["sample_data/meshes/bathtub_0002.off", "sample_data/meshes/bed_0001.off",
                     "sample_data/meshes/teapot.stl", str(broken / "bed.off"), str(broken / "cut.off")]
    r = run("classify", "sample_data/meshes")
    assert r.exit_code == 0 and r.stdout.splitlines()[0].strip() == "3 files in sample_data/meshes"
    for ln in r.stdout.splitlines():
        if ln.startswith("│"):
            _, name, label, prob, second, _ = ln.split("│")
            assert re.fullmatch(r"\d\.\d{4}", prob.strip()) and re.fullmatch(r"\S+ \d\.\d{4}", second.strip()), ln
            assert "closest" not in label or re.search(r"\(closest: \S+ \d\.\d{4}\)", label), ln


def test_evaluate_names_the_model_and_says_what_its_group_does_not_cover(sample_dataset, tmp_path, monkeypatch):
    """`pcsym evaluate o2 --rotate so3`: the header and the PNG title name the model, a note says that o2
    is invariant only to rotations about z; the confusion matrix keeps every class name."""
    import pcsym.training.evaluate

    titles = []
    real = pcsym.training.evaluate.confusion_matrix_png  # imported at the module's top (issue 39)
    monkeypatch.setattr(pcsym.training.evaluate, "confusion_matrix_png", lambda *a: (titles.append(a[3]), real(*a)))
    r = run("evaluate", "o2-mn10", "--data", sample_dataset, "--rotate", "so3", "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    out = r.stdout.splitlines()
    assert out[0] == f"shipped model o2-mn10 (group o2) on {sample_dataset}"
    assert out[1].startswith("overall accuracy ") and "rotate=so3" in out[1]
    assert only_line(r) == ("note: o2-mn10 (group o2) is invariant only to rotations about z: --rotate so3 tests SO(3) "
                            "rotations it was not built for")
    assert titles and titles[0].startswith("o2-mn10 (o2): OA ") and "rotate=so3" in titles[0]
    assert "…" not in r.stdout and "│ 7 night_stand " in r.stdout and "│ 10 toilet " in r.stdout
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert (m["model"], m["group"], m["seed"]) == ("o2-mn10", "o2", None)


def test_evaluate_seed_draws_another_pass_and_the_same_seed_the_same(o2_run, sample_dataset):
    from pcsym.training.evaluate import evaluate_checkpoint

    def probs(seed):
        return np.array(evaluate_checkpoint(str(o2_run), sample_dataset, rotate="so3", seed=seed,
                                            logits=True)["probabilities"])

    one, again, two, fixed = probs(1), probs(1), probs(2), probs(None)
    assert np.array_equal(one, again)
    assert not np.allclose(one, two, atol=1e-4) and not np.allclose(one, fixed, atol=1e-4)
    r = run("evaluate", o2_run, "--data", sample_dataset, "--rotate", "so3", "--seed", "1", "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    assert m["seed"] == 1 and m["confusion_matrix"] == \
        evaluate_checkpoint(str(o2_run), sample_dataset, rotate="so3", seed=1)["confusion_matrix"]
    default = json.loads(run("evaluate", o2_run, "--data", sample_dataset, "--rotate", "so3", "--json").stdout)
    assert default["seed"] is None
    assert np.array_equal(np.array(default["confusion_matrix"]).sum(1), np.array(m["confusion_matrix"]).sum(1))
    r = run("evaluate", o2_run, "--data", sample_dataset, "--seed", "1")
    assert "seed=1)" in r.stdout.splitlines()[1]


# ----------------------------------------------------------------------------- errors and help


def test_classify_runs_pcsyms_onnx_export(o2_run, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    onnx = tmp_path / "best.onnx"
    assert run("export", o2_run / "best.pt", "--format", "onnx", "--out", onnx).exit_code == 0
    r = run("classify", BED, "--model", onnx, "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)["results"][0]["top"]
    want = json.loads(run("classify", BED, "--model", o2_run / "best.pt", "--json").stdout)["results"][0]["top"]
    assert [t["class"] for t in got] == [t["class"] for t in want]
    assert max(abs(a["probability"] - b["probability"]) for a, b in zip(got, want)) < 1e-3
    shutil.copy(onnx, tmp_path / "model.bin")  # under another name: still an ONNX export
    assert json.loads(run("classify", BED, "--model", tmp_path / "model.bin", "--json").stdout)["results"][0]["top"] \
        == got
    r = run("evaluate", onnx, "--data", MINI)
    assert r.exit_code == 2 and only_line(r).startswith(f"error: {onnx}: is a pcsym ONNX export, not a checkpoint")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # the optional extra not installed
    r = run("classify", BED, "--model", onnx)
    assert r.exit_code == 2
    assert only_line(r) == (f"error: {onnx}: running an ONNX model needs onnxruntime: pip install 'pcsym[onnx]' (or "
                            "classify with the checkpoint or a numpy/TorchScript export)")
    (tmp_path / "model.txt").write_text("not a model")
    r = run("classify", BED, "--model", tmp_path / "model.txt")
    assert r.exit_code == 2
    assert only_line(r) == (f"error: {tmp_path / 'model.txt'}: not a model pcsym can run: --model takes a shipped "
                            "model name (so3, o2, so3-mn10, o2-mn10), a checkpoint .pt or run folder, or an export: numpy .npz, "
                            "TorchScript .ts or ONNX .onnx")


@pytest.mark.parametrize("args, line", [
    (["classify", BED, "--seed", "-1"], "error: --seed must be 0 or more, got -1"),
    (["classify", BED, "--top-k", "0"], "error: --top-k must be at least 1, got 0"),
    (["classify", BED, "--votes", "9"], "error: --votes must be between 1 and 8, got 9"),
    (["classify", BED, "--up-axis", "x"], "error: unknown --up-axis 'x': use y or z"),
    (["classify", BED, "--threads", "two"], "error: --threads must be an integer, got 'two'"),
    (["evaluate", "o2", "--data", MINI, "--batch-size", "0"], "error: --batch-size must be at least 1, got 0"),
    (["evaluate", "o2", "--data", MINI, "--seed", "-3"], "error: --seed must be 0 or more, got -3"),
    (["evaluate", "o2", "--data", MINI, "--split", "dev"], "error: unknown --split 'dev': use train, val, test or all"),
    (["evaluate", "o2", "--data", MINI, "--device", "tpu"], "error: unknown --device 'tpu': use auto, cpu or cuda"),
    (["train", "--data", MINI, "--epochs", "0"], "error: --epochs must be at least 1, got 0"),
    (["train", "--data", MINI, "--lr", "-1"], "error: --lr must be greater than 0, got -1"),
    (["train", "--data", MINI, "--label-smoothing", "1"], "error: --label-smoothing must be in [0, 1), got 1"),
    (["train", "--data", MINI, "--seed", "abc"], "error: --seed must be an integer, got 'abc'"),
    (["train", "--data", MINI, "--max-freq", "9"], "error: --max-freq must be between 0 and 4, got 9"),
    (["check-equivariance", "--group", "m", "--tol", "0"], "error: --tol must be greater than 0, got 0"),
    (["export", "o2", "--format", "tflite"], "error: unknown --format 'tflite': use torchscript, onnx or numpy"),
    (["data", "prepare", MINI, "--points", "0"], "error: --points must be at least 1, got 0"),
    (["evaluate", "o2"], "error: Missing option '--data'. (see 'root evaluate --help')"),
])
def test_every_bad_value_is_one_line_naming_its_flag(args, line):
    r = run(*args)
    assert r.exit_code == 2 and only_line(r) == line, r.output


_NO_HEAVY = ("import sys\nfrom pcsym.cli import main\nsys.argv = ['pcsym', *sys.argv[1:]]\ntry:\n    main()\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print('heavy:', [m for m in ('torch', 'escnn') if m in sys.modules])\nsys.exit(code)\n")


@pytest.mark.parametrize("args, line", [
    (["evaluate", "so3", "--data", "/nonexistent"], "error: /nonexistent: no such dataset file or directory (--data)"),
    (["classify", BED, "--seed", "-1"], "error: --seed must be 0 or more, got -1"),
    (["train", "--data", "/nonexistent", "--out", "{tmp}/run"],
     "error: /nonexistent: no such dataset file or directory (--data)"),
    (["evaluate", "so3", "--data", "sample_data/modelnet10_mini", "--rotate", "sideways"],
     "error: unknown --rotate 'sideways': use none, z or so3"),
    (["evaluate", "so3", "--data", "sample_data/modelnet10_mini", "--out", "{tmp}"],
     "error: {tmp}/metrics.json: already exists; pass --force to overwrite it"),
    (["export", "so3", "--out", "{tmp}/metrics.json"], "error: {tmp}/metrics.json: already exists; pass --force to "
                                                       "overwrite it"),
    (["check-equivariance", "{tmp}/missing.pt"],
     "error: {tmp}/missing.pt: checkpoint not found (pass a .pt file or a shipped model name: so3, o2, so3-mn10, o2-mn10)"),
])
def test_argument_errors_are_reported_before_torch_is_imported(args, line, tmp_path):
    """`pcsym evaluate so3 --data /nonexistent` took 4 s (torch and escnn first): every argument is checked
    before the heavy imports, in a fraction of a second."""
    (tmp_path / "metrics.json").write_text("{}")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = subprocess.run([sys.executable, "-c", _NO_HEAVY, *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [line.replace("{tmp}", str(tmp_path))]
    assert proc.stdout.strip() == "heavy: []"
    assert (tmp_path / "metrics.json").read_text() == "{}"


def test_help_lists_the_choices_and_accepts_any_case(monkeypatch):
    helps = {cmd: run(*cmd.split(), "--help").stdout for cmd in ("evaluate", "train", "export", "classify",
                                                                  "data prepare", "check-equivariance")}
    for cmd, shown in (("evaluate", "--rotate <none|z|so3>"), ("evaluate", "--format <h5|normal_resampled|off|folder>"),
                       ("evaluate", "--up-axis <y|z>"), ("evaluate", "--sampling <random|fps|random-fps>"),
                       ("evaluate", "--split <train|val|test|all>"), ("evaluate", "--device <auto|cpu|cuda>"),
                       ("train", "--schedule <cosine|step>"), ("train", "--rotate <none|z|so3>"),
                       ("train", "--optimizer <adamw|sgd>"), ("train", "--select <macc|oa|last>"),
                       ("train", "--balance <none|loss|sampler>"), ("train", "--edge-features <none|ppf|ppf+normals|ppf-unsigned>"),
                       ("train", "--kernel <implicit|basis>"), ("export", "--format <torchscript|onnx|numpy>"),
                       ("classify", "--up-axis <y|z>"), ("data prepare", "--format <h5|normal_resampled|off|folder>"),
                       ("check-equivariance", "--kernel <implicit|basis>")):
        assert shown in helps[cmd], (cmd, shown)
    assert not re.search(r"--(rotate|format|up-axis|sampling|split|device|kernel|schedule) <str>", "".join(helps.values()))
    monkeypatch.chdir(ROOT)
    r = run("classify", BED, "--up-axis", "Z", "--json")
    assert r.exit_code == 0, r.output
    from pcsym.cli.common import choice

    assert choice("--rotate", ("none", "z", "so3"))("SO3") == "so3"


def test_every_option_and_argument_has_a_description():
    import typer.main

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{path} {name}")
        else:
            for p in cmd.params:
                yield path, p

    missing = [f"{path}: {'/'.join(p.opts)}" for path, p in walk(typer.main.get_command(app), "pcsym")
               if not (getattr(p, "help", None) or "").strip()]
    assert not missing, missing


def test_quiet_and_debug_after_the_command_reach_it():
    from pcsym.cli.common import GlobalOptions, options, quiet_option

    seen = {}

    @app.command("probe-quiet", hidden=True)
    def _probe(ctx: typer.Context, _quiet: bool = quiet_option()):
        seen["opts"] = options(ctx)

    try:
        assert run("probe-quiet", "-q").exit_code == 0 and seen["opts"] == GlobalOptions(quiet=True)
        assert run("probe-quiet", "--quiet").exit_code == 0 and seen["opts"].quiet
        assert run("probe-quiet").exit_code == 0 and seen["opts"] == GlobalOptions()
    finally:
        app.registered_commands[:] = [c for c in app.registered_commands if c.name != "probe-quiet"]
    for cmd in ("train", "evaluate", "classify", "export", "check-equivariance", "groups", "data fetch",
                "data prepare"):
        shown = run(*cmd.split(), "--help").stdout
        assert "-q, --quiet" in shown and "--debug" in shown, cmd


def test_data_fetch_help_lists_the_known_datasets_and_fetch_refuses_to_replace(tmp_path):
    from pcsym.cli.data import KNOWN_DATASETS
    from pcsym.data.fetch import KNOWN_DATASETS as KNOWN

    assert KNOWN_DATASETS == tuple(KNOWN)
    shown = run("data", "fetch", "--help").stdout
    assert "--list" not in shown and all(name in " ".join(shown.split()) for name in KNOWN_DATASETS)
    archive = tmp_path / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("tiny/shape_names.txt", "a\n")
    out = tmp_path / "dl"
    assert run("-q", "data", "fetch", archive.as_uri(), "--out", out).exit_code == 0
    (out / "tiny" / "shape_names.txt").write_text("mine\n")
    r = run("-q", "data", "fetch", archive.as_uri(), "--out", out)
    assert r.exit_code == 2
    assert only_line(r) == f"error: {out / 'tiny'}: already exists; pass --force to replace it with the archive's " \
                           "contents"
    assert (out / "tiny" / "shape_names.txt").read_text() == "mine\n"
    assert run("-q", "data", "fetch", archive.as_uri(), "--out", out, "--force").exit_code == 0
    assert (out / "tiny" / "shape_names.txt").read_text() == "a\n"


def test_one_overwrite_rule_for_every_command_that_writes(o2_run, sample_dataset, tmp_path):
    for cmd in (["export", o2_run, "--format", "numpy", "--out", tmp_path / "m.npz"],
                ["evaluate", o2_run, "--data", sample_dataset, "--out", tmp_path / "ev"],
                ["data", "prepare", MINI, "--points", "256", "--out", tmp_path / "cache.npz"]):
        assert run(*cmd).exit_code == 0
        target = cmd[-1] / "metrics.json" if cmd[0] == "evaluate" else cmd[-1]
        stamp = target.stat().st_mtime_ns, target.read_bytes()
        r = run(*cmd)
        assert r.exit_code == 2 and only_line(r) == f"error: {target}: already exists; pass --force to overwrite it"
        assert (target.stat().st_mtime_ns, target.read_bytes()) == stamp
        assert run(*cmd, "--force").exit_code == 0, cmd


def test_constants_the_cli_keeps_to_stay_fast_match_the_library():
    from pcsym.cli import classify, evaluate, export
    from pcsym.inference.export import EXPORT_FORMATS
    from pcsym.inference.runtime import VOTE_ORDERS
    from pcsym.data.splits import SPLITS

    assert classify.VOTE_ORDERS == VOTE_ORDERS and export.FORMATS == EXPORT_FORMATS
    assert evaluate.SPLITS == SPLITS
