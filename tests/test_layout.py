"""The folders are the architecture: imports flow one way (DESIGN.md). The experiment assembles;
the loop, evaluation, data and benchmarks receive what it built and import nothing from each
other's private helpers; nothing below the experiment imports it (type hints aside; the
commands and `imp bench`, which builds experiments of synthetic tasks, sit above it)."""

import ast
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "imp": ROOT / "imp",
    "imp.tasks": ROOT / "tasks",
    "imp.partitioning": ROOT / "partitioning",
}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    """Modules imported by `path`, outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            typing_only |= {id(n) for n in ast.walk(node)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {n for n in names if n.startswith("imp")}


MODULES = _modules()


def _importers(prefixes: tuple[str, ...]) -> list[str]:
    return [m for m in MODULES if m.startswith(prefixes)]


@pytest.mark.parametrize(
    "importers, forbidden",
    [
        (("imp.evaluation", "imp.data", "imp.bench"), "imp.training.loop"),
        (("imp.training.loop",), "imp.evaluation"),
        (("imp.data",), "imp.modeling"),
        (("imp.modeling",), "imp.data"),
        (
            ("imp.modeling", "imp.tasks.spec", "imp.training", "imp.partitioning"),
            "imp.tasks.registry",
        ),
        (
            (
                "imp.modeling",
                "imp.training",
                "imp.evaluation",
                "imp.data",
                "imp.tasks",
                "imp.bench.scan",
            ),
            "imp.experiment",
        ),
    ],
)
def test_imports_flow_one_way(importers, forbidden):
    offenders = {
        module: sorted(n for n in _imports(MODULES[module]) if n.startswith(forbidden))
        for module in _importers(importers)
        if module != forbidden
    }
    assert not {m: n for m, n in offenders.items() if n}


def test_the_tpu_launcher_quotes_what_reaches_the_remote_shell():
    """A repository URL or flag with shell syntax stays one word on the remote side."""
    repo = "https://example.com/imp.git; touch /tmp/pwned"
    flag = "--gin.MODEL_DIR='$(id)' x"
    out = subprocess.run(
        [
            "bash",
            str(ROOT / "launch/tpu_pod.sh"),
            "--tpu",
            "t",
            "--zone",
            "z",
            "--repo",
            repo,
            "--dry_run",
            "--",
            flag,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    local = shlex.split(out)
    remote = shlex.split(local[local.index("--command") + 1])  # as the remote shell splits it
    assert repo in remote and flag in remote  # each one word, nothing of them run
