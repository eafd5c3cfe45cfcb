"""The ``dormant`` command: ``verify`` runs both builds and reports them equal, generator
included, saying what its figures mean; ``--help`` shows only public commands, each option with
its default; ``--version`` names the installed version."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata

import pytest

import dormant
from dormant.cli import main


def dormant_cli(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "dormant.cli", *args], capture_output=True, text=True, check=True
    ).stdout


def test_verify_reports_bit_identical() -> None:
    out = dormant_cli("verify", "--size", "tiny", "--seed", "3")
    assert "(tiny: hidden 128, 2 layers, 1M parameters), seed 3" in out
    assert "bit-identical tensors: 21 of 21" in out
    assert "random generator after the build: as eager leaves it" in out
    assert re.search(r"eager: construct [\d.]+ s, peak RSS \+\d+ MiB", out)
    assert re.search(r"lazy:  construct [\d.]+ s \+ materialize [\d.]+ s", out)
    # Each ratio says which way is better and against what.
    assert re.search(r"lazy total / eager construct: [\d.]+x \(lower is better", out)
    assert re.search(r"recording / meta-device build: [\d.]+x .*median of 5", out)
    assert 'lower is better; 1x: as fast as torch.device("meta")' in out
    # The total counts the imports, paid once for the three builds.
    wall = re.search(r"wall time ([\d.]+) s, of which ([\d.]+) s starting Python and", out)
    assert wall and 0 < float(wall[2]) < float(wall[1])


def printed(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """What ``dormant ARGS`` prints before exiting with status 0 (``--help``, ``--version``)."""
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_help_lists_public_commands_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    top = printed(capsys, "--help")
    assert "verify" in top and "--version" in top
    assert "_probe" not in top and "SUPPRESS" not in top
    sub = printed(capsys, "verify", "--help")
    flat = " ".join(sub.split())  # argparse wraps to the terminal's width
    assert "(default: small)" in flat and "(default: 0)" in flat
    # Every option but --help has help text that states its default.
    options = re.split(r"\n  (?=-)", sub.split("options:", 1)[1])[1:]
    assert len(options) >= 3
    for option in options:
        if not option.startswith("-h, --help"):
            assert "(default: " in " ".join(option.split()), option


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    out = printed(capsys, "--version")
    try:
        expected = metadata.version("dormant")
    except metadata.PackageNotFoundError:
        expected = dormant.__version__
    assert out.strip().startswith(f"dormant {expected} (torch ")
