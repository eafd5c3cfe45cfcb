"""The ``dormant verify`` command runs both builds and reports them equal, generator included."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("transformers")


def test_verify_reports_bit_identical() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dormant.cli", "verify", "--size", "tiny"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "bit-identical tensors: 21 of 21" in out
    assert "random generator after the build: as eager leaves it" in out
    assert "eager: construct" in out and "peak RSS" in out and "a meta-device build" in out
