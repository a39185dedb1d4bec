"""benchmarks/speed/bench_cli.py --forward-baseline: the shipped model's numpy forward pass against the same
shipped model at a git ref, both really run (a missing ref is a one-line error, not a traceback)."""
import pytest

from benchmarks.speed import bench_cli


def test_forward_rows_time_both_models():
    rows = bench_cli.forward_rows("so3", "HEAD", repeats=2)
    assert [r["name"] for r in rows] == ["numpy forward, in process, median of 2",
                                         "numpy forward, in process, median of 2 (baseline)"]
    assert all(len(r["times_s"]) == 2 and 0 < r["median_s"] < 5 for r in rows)
    assert rows[1]["command"] == "load_classifier('so3' at HEAD).predict"


def test_forward_baseline_without_the_model_is_a_clear_error():
    with pytest.raises(SystemExit, match=r"^error: no pcsym/pretrained/so3.npz at no-such-ref-xyz: "):
        bench_cli.forward_rows("so3", "no-such-ref-xyz", repeats=1)


def test_forward_baseline_with_a_checkpoint_path_is_refused_before_timing(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["bench_cli.py", "--model", "runs/x/best.pt", "--forward-baseline", "HEAD"])
    with pytest.raises(SystemExit) as e:
        bench_cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: --forward-baseline times a shipped model (so3 or o2) against itself at REF; " \
           "'runs/x/best.pt' is not one" in err
