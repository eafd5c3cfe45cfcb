"""The ``dormant`` command line.

``dormant verify`` builds a transformers Llama eagerly and lazily from the same seed, checks that
every tensor is bit-identical and that the random generator stands where eager construction
leaves it, and prints the time and peak resident memory of both, with recording's time against a
meta-device build.

Each build runs in a child process of its own, so that its peak memory is its own and no build
warms caches for the next. On Linux the children are forked from a parent that has already
imported torch and transformers: the imports, which take longer than the builds, are paid once
instead of once per build. The parent runs no torch op before forking: a child forked after
OpenMP started its threads could hang. Elsewhere the children are spawned (fresh interpreters).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import statistics
import sys
import time
from importlib import metadata
from typing import Any

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 128,
        "intermediate_size": 352,
        "num_hidden_layers": 2,
        "vocab_size": 1000,
    },
    "small": {
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_hidden_layers": 8,
        "vocab_size": 32000,
    },
    "base": {
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 12,
        "vocab_size": 32000,
    },
}

# Recording and a meta-device build of the small sizes take milliseconds: one build is mostly
# noise, so their ratio is the median of this many warm builds of each, interleaved.
OVERHEAD_REPEATS = 5


def peak_rss() -> int:
    """This process's peak RSS in bytes: ``VmHWM`` where Linux has it (``ru_maxrss`` would also
    count the parent's peak, which Linux keeps across exec), else ``ru_maxrss``.

    The peak ``dormant verify`` reports; measure a build's memory as the growth of it::

        >>> from dormant.cli import peak_rss
        >>> before = peak_rss()
        >>> grown = peak_rss() - before  # (build and materialize in between)
    """
    return _proc_status("VmHWM:") or _ru_maxrss()


def _rss() -> int:
    """This process's resident memory now, in bytes (its peak where Linux does not say)."""
    return _proc_status("VmRSS:") or _ru_maxrss()


def _proc_status(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _ru_maxrss() -> int:
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _process_age() -> float:
    """Seconds since this process started, from Linux's ``/proc``; 0.0 where it cannot say."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime, ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def _version() -> str:
    try:
        version = metadata.version("dormant")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        from dormant import __version__ as version
    import torch

    return f"dormant {version} (torch {torch.__version__})"


def _llama(size: str) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(num_attention_heads=8, num_key_value_heads=8, **SIZES[size])
    return LlamaForCausalLM, config


def _build(mode: str, size: str, seed: int) -> dict[str, Any]:
    """Build the model once in this process ("eager" or "lazy", then materialized); return
    timings, how much the peak memory grew, a digest per tensor and one of the generator's
    state. The growth, not the peak, is what compares across platforms: a forked child counts
    fewer of the pages its parent's imports mapped than a fresh interpreter does."""
    import torch

    from dormant import LazyInitContext, materialize

    cls, config = _llama(size)
    before = _rss()
    torch.manual_seed(seed)
    threads = 0
    start = time.perf_counter()
    if mode == "eager":
        model = cls(config)
        built = time.perf_counter()
    else:
        with LazyInitContext():
            model = cls(config)
        built = time.perf_counter()
        threads = materialize(model, report=True).threads
    done = time.perf_counter()
    grown = peak_rss() - before
    rng = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()
    digests = {
        name: hashlib.sha256(t.detach().contiguous().view(torch.uint8).numpy()).hexdigest()
        + f"/{t.dtype}/{tuple(t.shape)}"
        for name, t in model.state_dict().items()
    }
    return {
        "construct": built - start,
        "total": done - start,
        "peak_mib": grown / 2**20,
        "parameters": sum(p.numel() for p in model.parameters()),
        "digests": digests,
        "rng": rng,
        "threads": threads,
    }


def _overhead(size: str, seed: int) -> dict[str, Any]:
    """Median construct time of lazy recording and of a meta-device build of the same code (the
    least any build that allocates nothing can take), each warmed up once, then interleaved."""
    import torch

    from dormant import LazyInitContext

    cls, config = _llama(size)
    times: dict[str, list[float]] = {"meta": [], "lazy": []}
    for _ in range(OVERHEAD_REPEATS + 1):
        for mode, ctx in (("meta", torch.device("meta")), ("lazy", LazyInitContext())):
            torch.manual_seed(seed)
            start = time.perf_counter()
            with ctx:
                model = cls(config)
            times[mode].append(time.perf_counter() - start)
            del model
    return {mode: statistics.median(t[1:]) for mode, t in times.items()}


def _in_child(work: Any, *args: Any) -> dict[str, Any]:
    """Run ``work(*args)`` in a child process and return its result."""
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    with multiprocessing.get_context(method).Pool(1, maxtasksperchild=1) as pool:
        result: dict[str, Any] = pool.apply(work, args)
    return result


def verify(size: str, seed: int) -> int:
    """Compare eager and lazy construction; return the process exit code."""
    # Time since the process started where the system says (the import of torch that loading
    # this module started is then counted), else since this call.
    start = time.perf_counter() - _process_age()
    import torch  # noqa: F401  (imported once here, inherited by the forked children)

    _llama(size)
    imports = time.perf_counter() - start
    eager = _in_child(_build, "eager", size, seed)
    lazy = _in_child(_build, "lazy", size, seed)
    overhead = _in_child(_overhead, size, seed)
    same = [k for k, v in eager["digests"].items() if lazy["digests"].get(k) == v]
    total = len(eager["digests"])
    rng_same = lazy["rng"] == eager["rng"]
    cfg = SIZES[size]
    print(
        f"dormant verify: LlamaForCausalLM ({size}: hidden {cfg['hidden_size']}, "
        f"{cfg['num_hidden_layers']} layers, {eager['parameters'] / 1e6:.0f}M parameters), "
        f"seed {seed}"
    )
    print(
        f"  eager: construct {eager['total']:.2f} s, "
        f"peak RSS +{eager['peak_mib']:.0f} MiB over the imported libraries"
    )
    print(
        f"  lazy:  construct {lazy['construct']:.2f} s + materialize "
        f"{lazy['total'] - lazy['construct']:.2f} s on {lazy['threads']} thread(s) = "
        f"{lazy['total']:.2f} s, peak RSS +{lazy['peak_mib']:.0f} MiB"
    )
    print(
        f"  lazy total / eager construct: {lazy['total'] / eager['total']:.2f}x "
        "(lower is better; under 1x: faster than eager)"
    )
    print(
        f"  recording / meta-device build: {overhead['lazy'] / overhead['meta']:.1f}x "
        f"({overhead['lazy'] * 1e3:.0f} ms / {overhead['meta'] * 1e3:.0f} ms, construct only, "
        f"median of {OVERHEAD_REPEATS})\n"
        '    (lower is better; 1x: as fast as torch.device("meta"), which keeps no values)'
    )
    print(f"  bit-identical tensors: {len(same)} of {total}")
    print(f"  random generator after the build: {'as' if rng_same else 'NOT as'} eager leaves it")
    if len(same) != total:
        print("  DIFFERENT: " + ", ".join(sorted(set(eager["digests"]) - set(same))[:10]))
    print(
        f"  wall time {time.perf_counter() - start:.1f} s, of which {imports:.1f} s starting "
        "Python and importing torch and transformers\n"
        "    (once: each build ran in a process forked after the imports)"
    )
    return 0 if len(same) == total and rng_same else 1


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="dormant",
        description="dormant: build PyTorch models lazily, then materialize them with exactly "
        "the values eager construction gives.",
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    v = sub.add_parser(
        "verify",
        help="check lazy == eager on a transformers Llama, with time and memory of both",
        description="Build a transformers LlamaForCausalLM eagerly and lazily from the same "
        "seed, each in a process of its own; check that every tensor is bit-identical and that "
        "the random generator stands where eager construction leaves it (exit status 1 if not); "
        "print time and peak memory of both, and recording's time against a meta-device build.",
        formatter_class=fmt,
    )
    sizes = "; ".join(
        f"{k}: hidden {c['hidden_size']}, {c['num_hidden_layers']} layers" for k, c in SIZES.items()
    )
    v.add_argument("--size", choices=list(SIZES), default="small", help=f"model size ({sizes})")
    v.add_argument("--seed", type=int, default=0, help="torch.manual_seed before each build")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dormant`` command.

    Example::

        $ dormant verify --size tiny
    """
    args = _parser().parse_args(argv)
    return verify(args.size, args.seed)


if __name__ == "__main__":
    sys.exit(main())
