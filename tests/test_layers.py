"""Dependencies point one way (DESIGN.md §3): the runtime uses the pipeline, plan,
sources, sinks and checkpoints; sources, sinks and checkpoints know nothing of each other
or of the layers above them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "flowstream"
ABOVE = ("flowstream.plan", "flowstream.pipeline", "flowstream.runtime", "flowstream.replay")
PARTS = ("sources", "sinks", "checkpoints")


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (also inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("part", PARTS)
def test_sources_sinks_and_checkpoints_do_not_import_upwards_or_sideways(part: str) -> None:
    others = tuple(f"flowstream.{other}" for other in PARTS if other != part)
    for path in sorted((PACKAGE / part).rglob("*.py")):
        wrong = {
            module
            for module in imports(path)
            if module.startswith(ABOVE) or module.startswith(others)
        }
        assert not wrong, f"{path.relative_to(PACKAGE.parent)} imports {sorted(wrong)}"
