"""The shape every benchmark reports in, and the page it is written to.

Each benchmark module has ``sections(*, quick: bool) -> list[Section]``; `run_all.py`
runs them in one process and writes `docs/performance.md`. Every figure stands next to
its baselines from the same run, as a ratio: absolute rates on a shared machine are
noise, ratios are not.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["Section", "machine", "markdown_table", "text_table", "write_page"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Section:
    """One table with its title, the command that reproduces it, and notes."""

    title: str
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    command: str
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [
            f"## {self.title}",
            "",
            f"`{self.command}`",
            "",
            markdown_table(self.header, self.rows),
        ]
        if self.notes:
            parts += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(parts)

    def text(self) -> str:
        return f"{self.title}\n{text_table(self.header, self.rows)}"


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    out = []
    for n, row in enumerate(table):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        out.append("  ".join(cells))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def machine() -> str:
    """One line about where the numbers were taken."""
    return (
        f"Python {sys.version.split()[0]} on {platform.machine()} ({os.cpu_count()} CPUs), "
        f"{platform.system()}, {datetime.now(UTC):%Y-%m-%d}"
    )


INTRO = """# Performance

flowstream's speed, measured against what a Python user would otherwise write, in one
process and one run: absolute rates on a shared machine move from run to run, the ratios
to the baselines beside them do not. Reproduce everything with

    python3 -m pip install -e '.[dev,local,bench]' && python3 benchmarks/run_all.py

(`--quick` for a short run). Each table says which script makes it on its own.
"""


def write_page(
    sections: list[Section],
    path: Path = ROOT / "docs" / "performance.md",
    *,
    merge: bool = False,
) -> None:
    """Write `docs/performance.md` from `sections`. With `merge`, the page's other
    sections stay as they are and only those with the same titles are replaced (a rerun
    of one benchmark)."""
    blocks: dict[str, str] = {}
    measured = f"Measured: {machine()}."
    if merge and path.exists():
        old = path.read_text()
        # the page's date stays that of the full run; a rerun section says its own
        measured = next((line for line in old.splitlines() if line.startswith("Measured:")), "")
        for block in old.split("\n## ")[1:]:
            title = block.split("\n", 1)[0]
            blocks[title] = "## " + block.rstrip() + "\n"
    for section in sections:
        if merge:
            section = replace(section, notes=[*section.notes, f"Measured alone: {machine()}."])
        blocks[section.title] = section.markdown()
    body = [INTRO, measured or f"Measured: {machine()}.", ""]
    for block in blocks.values():
        body += [block.rstrip(), ""]
    path.write_text("\n".join(body))
