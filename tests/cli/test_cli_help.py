"""Every `flowstream` command explains itself: `--help` ends with an example of it."""

from __future__ import annotations

import pytest

from flowstream import cli

COMMANDS = ["run", "describe", "status", "tail", "checkpoints", "lint", "demo", "replay", "pattern"]


def test_every_command_is_listed_in_the_main_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert f"    {command} " in out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_ends_with_an_example_of_the_command(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    example = out.split("example:\n", 1)[1]
    assert f"flowstream {command} " in example or f" {command} " in example.splitlines()[0]
