"""`bge-triton --help` explains itself: one line per command, every option with help text and its default, and
`--version` prints the installed package's version. Rendered at 80 columns, the narrowest common terminal."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from importlib.metadata import version

import pytest

import bge_triton
from bge_triton.cli import build_parser

COMMANDS = ("export", "serve", "serve-proxy", "make-bench-model", "bench", "eval", "nginx-config")


def _help(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "bge_triton", *args, "--help"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "COLUMNS": "80"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_top_level_help_lists_every_command_on_one_line() -> None:
    text = _help()
    assert set(_subparsers()) == set(COMMANDS)
    lines = text.splitlines()
    for command in COMMANDS:
        (line,) = [line for line in lines if re.match(rf"^  {re.escape(command)} ", line)]
        help_text = line[len(command) + 2 :].strip()
        assert len(help_text) > 10, line  # the one-line help sits on the command's own line
        following = lines[lines.index(line) + 1]
        assert not following.startswith(" " * 10), f"{command}'s help wraps onto a second line:\n{text}"
        assert len(line) <= 80
    assert "--version" in text and "COMMAND --help" in text


def test_version_prints_the_package_version() -> None:
    result = subprocess.run([sys.executable, "-m", "bge_triton", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.strip() == f"bge-triton {version('bge-triton')}"
    assert bge_triton.__version__ == version("bge-triton")


def _option_blocks(text: str) -> dict[str, str]:
    """Each option's block of `--help` output (its invocation line and wrapped help), by its long flag."""
    blocks: dict[str, str] = {}
    current = None
    for line in text.split("\noptions:\n", 1)[1].splitlines():
        match = re.match(r"^  (-\S+)", line)
        if match:
            flags = re.findall(r"(?:^|, )(--?[\w-]+)", line.strip())
            current = next((f for f in flags if f.startswith("--")), flags[0])
            blocks[current] = line
        elif current and line.startswith("    "):
            blocks[current] += " " + line.strip()
    return blocks


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_and_shows_its_default(command: str) -> None:
    parser = _subparsers()[command]
    blocks = _option_blocks(_help(command))
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = next((f for f in action.option_strings if f.startswith("--")), action.option_strings[0])
        assert action.help, f"{command} {flag} has no help text"
        block = re.sub(r"\s+", " ", blocks[flag])
        assert "default" in block or "(required)" in block, f"{command} {flag} does not show its default: {block}"


def test_serve_host_help_states_the_real_default() -> None:
    blocks = _option_blocks(_help("serve"))
    host = re.sub(r"\s+", " ", blocks["--host"])
    assert "(default: 127.0.0.1)" in host and "0.0.0.0" in host
    assert "Triton's own default" not in host  # the old wording named a default serve does not use
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
