"""``python -m quartet_compile.check``: on a CPU machine it says there is no GPU and lists the
routes; on a GPU every kernel agrees with the reference on fresh data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from quartet_compile import check


def test_without_a_gpu_the_check_says_so_and_lists_the_routes(tmp_path):
    """Run as a command, with CUDA hidden where the test machine has it."""
    script = (
        "import runpy, sys, torch\n"
        "torch.cuda.is_available = lambda: False\n"
        "sys.argv = ['quartet-check', '--out', sys.argv[1]]\n"
        "runpy.run_module('quartet_compile.check', run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "check.json")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no CUDA GPU" in result.stdout and "quartet2" in result.stdout
    report = json.loads((tmp_path / "check.json").read_text())
    assert {row["implementation"] for row in report["routes"]} == {"reference"}
    assert "exactness" not in report and report["versions"]["torch"] == torch.__version__


@pytest.mark.gpu
def test_on_a_gpu_every_kernel_agrees_with_the_reference(tmp_path):
    report = check.run(tmp_path / "check.json", timings=False)
    assert report["exactness"] and all(row["ok"] for row in report["exactness"]), report["exactness"]
    assert any(row["implementation"].startswith("triton") for row in report["routes"])
