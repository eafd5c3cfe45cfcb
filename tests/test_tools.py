"""``tools/test.sh``, the suite's entry point: its options are read before anything runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "test.sh"


def test_help_prints_usage_and_runs_nothing(tmp_path: Path) -> None:
    # From an empty folder with no interpreter to find: a run that started would fail at once.
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(tmp_path / "no-python")}
    for option in ("--help", "-h"):
        proc = subprocess.run(
            ["bash", str(SCRIPT), option], capture_output=True, text=True, env=env, timeout=30
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("usage: bash tools/test.sh [--core] [--help]")
        assert "--core" in proc.stdout and "TORCH_INDEX_URL" in proc.stdout
        assert "== core environment" not in proc.stdout + proc.stderr


def test_unknown_option_is_refused_before_running(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(tmp_path / "no-python")}
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--fast"], capture_output=True, text=True, env=env, timeout=30
    )
    assert proc.returncode == 2
    assert "unknown option --fast" in proc.stderr
    assert "== core environment" not in proc.stdout
