"""The README's commands are the ones CI runs, and every other command it shows runs (on the
CPU, at tiny sizes), so that none of them can rot."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

TINY = ["--model", "tiny", "--steps", "2", "--warmup", "0", "--batch", "2", "--seq-len", "32", "--eval-every", "2",
        "--eval-batches", "1", "--data-mb", "1", "--inner-backend", "aot_eager"]  # fmt: skip
"""Appended to training commands: argparse keeps the last value of an option."""


def _lines() -> list[str]:
    """Every command line of the README's ``bash`` blocks, comments stripped."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [line.split(" #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _commands() -> list[str]:
    """The commands of those lines (``a && b`` is two)."""
    return [part.strip() for line in _lines() for part in line.split("&&")]


def _is_install_or_test(command: str) -> bool:
    return command.startswith(("pip ", "python -m pip")) or "pytest" in command or command.startswith("bash ")


def test_ci_runs_the_readme_install_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    (test_line,) = [line for line in _lines() if "pytest" in line]
    assert test_line in ci
    assert "Install" in README and re.search(r"^#+ Install", README, flags=re.M), ".ci/run cites it"


def _runnable(command: str) -> list[str]:
    """The README command with tiny sizes, and the package's scripts run by this interpreter."""
    words = shlex.split(command)
    scripts = {"quartet-bench": "quartet_bench", "quartet-demo": "quartet_bench.demo", "quartet-tour":
               "quartet_bench.tour"}  # fmt: skip
    if words[0] in scripts:
        words = [sys.executable, "-m", scripts[words[0]], *words[1:]]
    elif words[:2] == ["python", "-m"] or words[0] == "python":
        words = [sys.executable, *words[1:]]
    module = words[2] if words[1] == "-m" else words[1]
    if module in ("quartet_compile", "quartet_bench", "quartet_bench.demo") and "--replot" not in words:
        words += TINY + (["--max-ranks", "2"] if "--distributed" in words else [])
    return words


COMMANDS = [c for c in _commands() if not _is_install_or_test(c)]


def test_the_readme_shows_commands():
    assert any("quartet_compile" in c for c in _commands()) and COMMANDS


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One folder for all commands, run in order: a later one may read what an earlier wrote."""
    return tmp_path_factory.mktemp("readme")


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs(command, workdir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(_runnable(command), cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "not run" not in result.stdout, result.stdout[-3000:]
