"""The README's commands are the ones CI and users actually run."""

import re

from .conftest import ROOT


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2
    setup_and_demo, tests = blocks[0].strip(), blocks[1].strip()
    assert "scripts/setup.sh" in setup_and_demo and "pcsym classify sample_data/" in setup_and_demo
    test_cmd = re.search(r"TEST_CMD='(.*)'", ci).group(1)
    assert tests == f"bash scripts/setup.sh && {test_cmd}"
