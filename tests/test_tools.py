"""``tools/test.sh``, the suite's entry point: its options are read before anything runs, and
each mode runs its own steps (read from a copy run with stand-in tools)."""

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


def fake_python(tmp_path: Path) -> Path:
    """An interpreter stand-in whose ``-m venv DIR`` makes DIR/bin/{pip,ruff,mypy,pytest} that
    only log their arguments, so the script's steps can be read without installing anything."""
    log = tmp_path / "calls.log"
    env_name = '$(basename "$(dirname "$(dirname "$0")")")'  # .venv for .venv/bin/pip
    stub = f'#!/bin/sh\necho "{env_name}/$(basename "$0") $*" >> {log}\n'
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        '[ "$1" = -m ] && [ "$2" = venv ] || exit 1\n'
        'mkdir -p "$3/bin"\n'
        f"for t in pip ruff mypy pytest; do printf %s '{stub}' > \"$3/bin/$t\"; "
        'chmod +x "$3/bin/$t"; done\n'
    )
    python.chmod(0o755)
    return python


def run_copy(tmp_path: Path, *args: str, **env: str) -> list[str]:
    """Run a copy of the script (its tools/ folder) from a scratch repository; return the
    steps it took."""
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    for name in ("test.sh", "zoo-requirements.txt", "zoo-requirements-nodeps.txt"):
        (repo / "tools" / name).write_text((SCRIPT.parent / name).read_text())
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake_python(tmp_path)), **env}
    proc = subprocess.run(
        ["bash", str(repo / "tools" / "test.sh"), *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return (tmp_path / "calls.log").read_text().splitlines()


def test_core_runs_lint_types_and_core_tests_only(tmp_path: Path) -> None:
    steps = run_copy(tmp_path, "--core")
    assert [s.split()[0] for s in steps if not s.startswith(".venv/pip")] == [
        ".venv/ruff", ".venv/ruff", ".venv/mypy", ".venv/pytest",
    ]  # fmt: skip
    assert "--ignore=tests/zoo/test_torchvision.py" in steps[-1]
    assert not (tmp_path / "repo" / ".venv-zoo").exists()


def test_full_run_takes_the_zoo_torch_from_the_index_asked(tmp_path: Path) -> None:
    index = "https://download.pytorch.org/whl/cpu"
    steps = run_copy(tmp_path, TORCH_INDEX_URL=index)
    zoo = [s for s in steps if s.startswith(".venv-zoo/")]
    first_install = next(s for s in zoo if " install " in s and "--upgrade pip" not in s)
    assert first_install == (
        f".venv-zoo/pip install -q --index-url {index} "
        "torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0"
    )
    assert zoo[-1].startswith(".venv-zoo/pytest -q")
    # Without the variable, torch comes with the rest of the requirements.
    assert not any("--index-url" in s for s in run_copy(tmp_path / "plain"))
