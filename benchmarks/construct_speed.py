"""Recording speed: construct-only time under LazyInitContext against meta-device construction.

Meta-device construction (``with torch.device("meta"): build()``) is the floor for recording:
it runs the same model code and the same meta kernels, and records nothing. This script times
both in one process, alternating (meta, dormant, meta, dormant, ...) after a warm-up build of
each, and reports the medians and their ratio. Run it once per dormant checkout to compare
versions on a noisy machine: the ratio, taken within one process, is the figure to compare.

    PYTHONPATH=src python benchmarks/construct_speed.py --models llama-7b vit-b --repeats 5
    PYTHONPATH=src python benchmarks/construct_speed.py --json   # one JSON line per model
    PYTHONPATH=src python benchmarks/construct_speed.py --clock cpu   # on a loaded machine

Two checkouts compared, each in its own processes, alternating, ``--rounds`` times (a markdown
table of medians; ``NAME=DIR`` puts ``DIR`` first on ``PYTHONPATH``):

    python benchmarks/construct_speed.py --versions before=/tmp/old/src after=src --rounds 3

``randn-8000`` is a module of 8000 ``nn.Parameter(torch.randn(16))``: per-op recording cost with
no model code around it. Nothing here asserts a time limit.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import MODELS


class ManySmall(nn.Module):
    """``n`` small random parameters: recording cost per op, and nothing else."""

    def __init__(self, n: int = 8000, size: int = 16) -> None:
        super().__init__()
        self.params = nn.ParameterList(nn.Parameter(torch.randn(size)) for _ in range(n))


BUILDERS: dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module]]] = {
    name: (m.build, m.tiny) for name, m in MODELS.items()
}
BUILDERS["randn-8000"] = (ManySmall, lambda: ManySmall(n=10))
DEFAULT = ["llama-7b", "vit-b", "unet-sd-half", "randn-8000"]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def _time(system: str, build: Callable[[], nn.Module]) -> float:
    from dormant import LazyInitContext

    gc.collect()
    torch.manual_seed(0)
    t0 = clock()
    if system == "meta":
        with torch.device("meta"):
            model = build()
    else:
        with LazyInitContext():
            model = build()
    elapsed = clock() - t0
    del model
    return elapsed


def measure(name: str, repeats: int) -> dict[str, object]:
    build, tiny = BUILDERS[name]
    for system in ("meta", "dormant"):
        _time(system, tiny)  # imports, first-call caches
    times: dict[str, list[float]] = {"meta": [], "dormant": []}
    for _ in range(repeats):
        for system in ("meta", "dormant"):
            times[system].append(_time(system, build))
    meta, dormant = (statistics.median(times[s]) for s in ("meta", "dormant"))
    return {"model": name, "meta_s": meta, "dormant_s": dormant, "ratio": dormant / meta, **times}


def compare(versions: list[str], rounds: int, passed: list[str]) -> None:
    """Run this script per version in fresh processes, alternating; print medians."""
    named = [v.split("=", 1) for v in versions]
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(rounds):
        for name, path in named:
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([path, os.environ.get("PYTHONPATH", "")]),
            }
            out = subprocess.run(
                [sys.executable, __file__, "--json", *passed],
                env=env, check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            for line in out.splitlines():
                r = json.loads(line)
                results.setdefault((r["model"], name), []).append(r)
    models = list(dict.fromkeys(model for model, _ in results))
    head = " | ".join(f"{name} s | {name} / meta" for name, _ in named)
    print(f"| model | meta s | {head} |")
    print("| --- | ---: |" + " ---: | ---: |" * len(named))
    for model in models:
        runs = [r for name, _ in named for r in results[(model, name)]]
        cells = [f"{statistics.median(r['meta_s'] for r in runs):.3f}"]
        for name, _ in named:
            mine = results[(model, name)]
            cells.append(f"{statistics.median(r['dormant_s'] for r in mine):.3f}")
            cells.append(f"{statistics.median(r['ratio'] for r in mine):.2f}")
        print(f"| {model} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT, choices=sorted(BUILDERS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one JSON line per model")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="cpu: this process's CPU time, steadier than wall time on a loaded machine",
    )
    parser.add_argument("--versions", nargs="+", metavar="NAME=DIR", help="compare checkouts")
    parser.add_argument("--rounds", type=int, default=3, help="with --versions: processes each")
    args = parser.parse_args()
    if args.versions:
        passed = ["--models", *args.models, "--repeats", str(args.repeats), "--clock", args.clock]
        compare(args.versions, args.rounds, passed)
        return
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(1)
    for name in args.models:
        r = measure(name, args.repeats)
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(
                f"{name:14s} meta {r['meta_s']:.3f} s  dormant {r['dormant_s']:.3f} s  "
                f"ratio {r['ratio']:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
