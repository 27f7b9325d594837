"""The docs site: mkdocs.yml builds docs/ with mkdocs-material and `--strict`, so a broken
link or anchor, or a page left out of the navigation, fails the tests (and CI); every page
in docs/ is in the nav and built. A second test breaks a link in a copy of the docs to
show the check can fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from mkdocs.utils.yaml import yaml_load

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "mkdocs.yml"
DOCS = ROOT / "docs"


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mkdocs", "build", "--strict"]
    command += ["--config-file", str(config), "--site-dir", str(site)]
    # NO_MKDOCS_2_WARNING: mkdocs-material's banner about its successor, noise in a failure
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def nav_pages(nav: Any) -> list[str]:
    """The pages a `nav` names: `page.md`, `{title: page.md}` and `{section: [...]}`, at
    any depth (links to other sites are not pages)."""
    if isinstance(nav, str):
        return [] if "://" in nav else [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return []


def test_the_site_builds_strictly_with_every_page_in_the_nav(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = build(CONFIG, site)
    assert result.returncode == 0, result.stdout + result.stderr

    # mkdocs' own loader: it reads the tags mkdocs.yml may use (!ENV, !!python/name:...)
    config = yaml_load(CONFIG.read_text())
    assert (ROOT / config["docs_dir"]).resolve() == DOCS
    in_nav = nav_pages(config["nav"])
    assert len(in_nav) == len(set(in_nav)), f"a page is in the nav twice: {in_nav}"
    pages = sorted(path.name for path in DOCS.glob("*.md"))
    assert sorted(in_nav) == pages
    for page in pages:
        stem = page.removesuffix(".md")
        built = site / "index.html" if stem == "index" else site / stem / "index.html"
        assert built.is_file(), f"{page} was not built into {built}"


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    shutil.copy(CONFIG, tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs")
    page = tmp_path / "docs" / "running.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")

    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "running.md" in output
    assert "no-such-page.md" in output
