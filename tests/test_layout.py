"""Imports flow pipelines -> detector and pipelines -> forecasting, never back."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "detector": {"forecasting", "pipelines"},
    "forecasting": {"detector", "pipelines"},
    "pipelines": set(),
}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"package {package}/ has no modules"
    bad = {
        str(f.relative_to(REPO)): sorted(_imported_top_levels(f) & FORBIDDEN[package])
        for f in files
    }
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"imports against the layout (pipelines -> detector/forecasting only): {bad}"


def test_the_checker_catches_a_wrong_import(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("from pipelines.cli import app\nimport forecasting.model as m\n")
    assert _imported_top_levels(f) == {"pipelines", "forecasting"}


#: Modules of the live path (frames -> alerts) and of the services.
LIVE = ("pipelines.run_service", "pipelines.score_service", "pipelines.detect_service")


def test_live_path_never_imports_offline_code() -> None:
    """Statically: no module of pipelines/ outside offline/ and the CLI imports
    pipelines.offline; dynamically: importing the services loads neither the offline
    sub-package nor the CLI's libraries (typer)."""
    import subprocess
    import sys

    offenders = {}
    for f in sorted((REPO / "pipelines").rglob("*.py")):
        rel = f.relative_to(REPO)
        if rel.parts[1] == "offline" or rel.name == "cli.py":
            continue
        mods = _imported_modules(f)
        bad = sorted(m for m in mods if m.startswith("pipelines.offline"))
        if bad:
            offenders[str(rel)] = bad
    assert not offenders, f"live code imports offline code: {offenders}"
    # Serving a checkpoint (score, detect) loads no trainer either; `run` may train (cold
    # start), so the trainer is only loaded when a camera learns its scene.
    for modules, banned in (
        (LIVE, ("pipelines.offline", "typer", "forecasting.evaluate")),
        (LIVE[1:], ("forecasting.train", "pipelines.learning")),
    ):
        code = (
            f"import sys; import {', '.join(modules)}; "
            f"bad = sorted(m for m in sys.modules if m.startswith({banned!r}) "
            "or m == 'pipelines.cli'); print(bad)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
        )
        assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


MAX_FUNCTION_LINES = 80


def test_no_function_in_pipelines_is_longer_than_80_lines() -> None:
    long = {}
    for f in sorted((REPO / "pipelines").rglob("*.py")):
        tree = ast.parse(f.read_text(), filename=str(f))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{f.relative_to(REPO)}:{node.lineno} {node.name}"] = n
    assert not long, f"functions longer than {MAX_FUNCTION_LINES} lines: {long}"
