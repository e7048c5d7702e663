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
