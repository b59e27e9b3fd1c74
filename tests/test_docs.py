"""The README says what the repository does: its test command is CI's, its layout is the tree."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_ci_runs_exactly_the_readmes_test_command():
    (command,) = re.findall(r"# set up, then run the lint and the tests\n(.+)\n", README)
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if not line.startswith("#")]
    assert lines[-1] == command and "set -euo pipefail" in lines and "export CI=true" in lines


def test_the_layout_names_every_module_and_folder():
    layout = README[README.index("## Layout") :].split("```")[1]
    package = ROOT / "collodreamer"
    named = [p for p in package.iterdir() if p.suffix == ".py" or (p.is_dir() and p.name != "__pycache__")]
    named += [p for p in package.glob("*/*.py") if p.parent.name in ("envs", "data", "planning", "training")]
    modules = [p for p in named if p.name not in ("__init__.py", "__main__.py")]
    assert [str(p.relative_to(package)) for p in modules if p.stem not in layout] == []
    for top in ("configs/", "tests/", "benchmarks/", "results/", "constraints.txt"):
        assert top in layout
