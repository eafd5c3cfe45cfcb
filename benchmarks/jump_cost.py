"""What moving a CPU generator forward costs: drawing the gap against jumping it.

Run: python benchmarks/jump_cost.py [--repeat 20] [--versions NAME=SRC ...]

Prints, per distance, the time of ``_mt19937.advance`` when it draws (numpy's C mt19937, without
writing the words) and when it jumps (a distance met before, so ``x^J mod P`` is cached, and a
new one), and the distance where the two cost the same: the measured basis of
``_mt19937.DRAW_BELOW``. One core, CPU time of the process (the machine may be shared), the
generator state of ``torch.manual_seed(0)``.

``--versions before=/tmp/before/src after=src`` also times the jump of each source tree's
``_mt19937.py`` in this one process, the trees taking turns, over six distances met before (as
in a boost, whose layers repeat the same gaps): the best of 15 rounds, so that load from
elsewhere moves the comparison less.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from dormant import _mt19937


def _time(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm: code loaded, caches filled
    runs = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        runs.append(time.process_time() - start)
    return statistics.median(runs)


def _load(name: str, src: str) -> ModuleType:
    """A source tree's ``_mt19937.py`` alone (it imports only numpy and torch)."""
    spec = importlib.util.spec_from_file_location(
        f"mt19937_{name}", Path(src) / "dormant/_mt19937.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare(versions: list[str]) -> None:
    state = torch.Generator().manual_seed(0).get_state()
    distances = [624 * (2000 + 1777 * k) for k in range(6)]
    jumps = {}
    for name, src in (v.split("=", 1) for v in versions):
        module = _load(name, src)
        # (names from before they were public)
        read = getattr(module, "read_state", None) or module._read
        jump = getattr(module, "block_ahead", None) or module._block_ahead
        words, _ = read(state)
        jumps[name] = (jump, words)
    blocks = [[jump(words, d) for d in distances] for jump, words in jumps.values()]
    assert all(np.array_equal(a, b) for other in blocks for a, b in zip(other, blocks[0])), (
        "the versions' jumps differ"
    )
    best = dict.fromkeys(jumps, float("inf"))
    for _ in range(15):
        for name, (jump, words) in jumps.items():
            start = time.process_time()
            for _ in range(5):
                for d in distances:
                    jump(words, d)
            best[name] = min(best[name], (time.process_time() - start) / (5 * len(distances)))
    for name, seconds in best.items():
        print(f"{name}: {seconds * 1e3:.3f} ms per jump (CPU, best of 15 rounds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--versions", nargs="+", default=[], metavar="NAME=SRC")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.versions:
        compare(args.versions)
        return
    words, pos = _mt19937.read_state(torch.Generator().manual_seed(0).get_state())

    def draw(n: int) -> None:
        _mt19937.numpy_generator(words, pos).random_raw(n, output=False)

    per_word = _time(lambda: draw(1 << 22), args.repeat) / (1 << 22)
    print(f"drawing: {per_word * 1e9:.2f} ns per 32-bit word")
    print(f"{'distance':>16} {'draw ms':>9} {'jump ms (seen)':>15} {'jump ms (new)':>14}")
    fresh = iter(range(10**6, 10**7))
    cached = []
    for distance in (1 << 19, 1 << 20, 1 << 22, 10**9, 10**12, 2**63):
        drawn = _time(lambda d=distance: draw(d), 3) if distance <= 1 << 24 else float("nan")
        seen = _time(lambda d=distance: _mt19937.block_ahead(words, d), args.repeat)
        new = _time(lambda d=distance: _mt19937.block_ahead(words, d + next(fresh)), args.repeat)
        cached.append(seen)
        print(f"{distance:>16} {drawn * 1e3:>9.2f} {seen * 1e3:>15.2f} {new * 1e3:>14.2f}")
    even = float(np.median(cached)) / per_word
    print(f"break-even distance (jump to a distance seen before): about {even / 1e6:.2f}M draws;")
    print(f"DRAW_BELOW is {_mt19937.DRAW_BELOW / 1e6:.2f}M")


if __name__ == "__main__":
    main()
