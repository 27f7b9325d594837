"""Prints pip constraints that pin every direct requirement of flowstream (its
dependencies and the `dev` extra) to the lower bound pyproject.toml gives it, markers
kept, so that CI runs the tests at those bounds too: a lower bound is one we ran."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

LOWER = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)(?:\[[^\]]*\])?\s*>=\s*(?P<version>[^,;\s]+)")


def constraints(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = []
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        spec, _, marker = requirement.partition(";")
        match = LOWER.match(spec.strip())
        if match is None:
            sys.exit(f"{pyproject}: {requirement!r} has no lower bound (>=); give it one")
        pin = f"{match['name']}=={match['version']}"
        lines.append(f"{pin}; {marker.strip()}" if marker.strip() else pin)
    return lines


if __name__ == "__main__":
    print("\n".join(constraints(Path(__file__).parents[1] / "pyproject.toml")))
