"""What sharded_boost.py and from_pretrained.py share: their command line and their output."""

from __future__ import annotations

import argparse
from pathlib import Path

MIB = 2**20


def parse_args(doc: str) -> argparse.Namespace:
    """``--model``, ``--repeat`` and ``--out`` for a script whose docstring is ``doc``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", choices=["llama-125m", "llama-350m"], default="llama-350m")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", help="also write the table to this markdown file")
    return parser.parse_args()


def emit(lines: list[str], out: str | None) -> None:
    """Print the markdown table, and write it to ``out`` if given (run.sh collects it)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out).write_text(text)
