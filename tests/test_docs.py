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


# The package's layers, lowest first: a module imports from its own folder and from lower layers only.
LAYERS = [
    {"files", "seeds", "timing", "averages", "schema", "spec"},
    {"config", "health"},
    {"rundir", "data", "envs", "planning", "models"},
    {"agents"},
    {"training"},
    {"experiments"},
    {"analysis"},
    {"cli"},
    {"__main__"},
]


def imported_parts(path: Path) -> set[str]:
    """The parts of the package (top-level modules and folders) that ``path`` imports, lazily too."""
    text = path.read_text()
    return set(re.findall(r"^\s*from collodreamer\.(\w+)", text, re.M)) | set(
        re.findall(r"^\s*from collodreamer import (\w+)", text, re.M)
    )


def test_each_part_imports_only_from_itself_and_the_layers_below():
    layer = {part: index for index, parts in enumerate(LAYERS) for part in parts}
    package = ROOT / "collodreamer"
    upward = []
    for path in package.rglob("*.py"):
        relative = path.relative_to(package)
        own = relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 else relative.stem
        if own == "__init__":
            continue
        for part in imported_parts(path) - {own}:
            if layer[part] >= layer[own]:
                upward.append(f"{relative} imports {part}")
    assert upward == []
    training = {part for path in (package / "training").glob("*.py") for part in imported_parts(path)}
    assert not training & {"models", "planning", "analysis"}


def test_benchmarks_and_soak_use_only_the_packages_surface():
    scripts = [*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "soak").glob("*.py")]
    deep = [
        f"{path.name}: {line}"
        for path in scripts
        for line in path.read_text().splitlines()
        if re.match(r"\s*from collodreamer\.\w+\.\w+ import", line)
    ]
    assert deep == []
