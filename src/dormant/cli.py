"""The ``dormant`` command line.

``dormant verify`` builds a transformers Llama eagerly and lazily, each in a fresh process from
the same seed, checks that every tensor is bit-identical and that the random generator stands
where eager construction leaves it, and prints the time and peak resident memory of both, with
recording's time against a meta-device build (a third process).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
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


def _peak_rss() -> int:
    """This process's peak RSS in bytes: ``VmHWM`` where Linux has it (``ru_maxrss`` would also
    count the parent's peak, which Linux keeps across exec), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _probe(mode: str, size: str, seed: int) -> dict[str, Any]:
    """Build the model in this process; return timings, peak memory and a digest per tensor."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from dormant import LazyInitContext, materialize

    config = LlamaConfig(num_attention_heads=8, num_key_value_heads=8, **SIZES[size])
    torch.manual_seed(seed)
    threads = 0
    start = time.perf_counter()
    if mode == "eager":
        model = LlamaForCausalLM(config)
        built = time.perf_counter()
    elif mode == "meta":  # what recording is measured against: the same code, nothing kept
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        built = time.perf_counter()
    else:
        with LazyInitContext():
            model = LlamaForCausalLM(config)
        built = time.perf_counter()
        threads = materialize(model, report=True).threads
    done = time.perf_counter()
    if mode == "meta":
        return {"construct": built - start}
    digests = {
        name: hashlib.sha256(
            t.detach().contiguous().view(torch.uint8).numpy().tobytes()
        ).hexdigest()
        + f"/{t.dtype}/{tuple(t.shape)}"
        for name, t in model.state_dict().items()
    }
    return {
        "construct": built - start,
        "total": done - start,
        "peak_mib": _peak_rss() / 2**20,
        "parameters": sum(p.numel() for p in model.parameters()),
        "digests": digests,
        "rng": hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest(),
        "threads": threads,
    }


def _run_probe(mode: str, size: str, seed: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "dormant.cli", "_probe", mode, "--size", size, "--seed", str(seed)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"dormant verify: the {mode} build failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def verify(size: str, seed: int) -> int:
    """Compare eager and lazy construction; return the process exit code."""
    eager = _run_probe("eager", size, seed)
    lazy = _run_probe("lazy", size, seed)
    meta = _run_probe("meta", size, seed)
    same = [k for k, v in eager["digests"].items() if lazy["digests"].get(k) == v]
    total = len(eager["digests"])
    cfg = SIZES[size]
    print(
        f"dormant verify: LlamaForCausalLM ({size}: hidden {cfg['hidden_size']}, "
        f"{cfg['num_hidden_layers']} layers, {eager['parameters'] / 1e6:.0f}M parameters)"
    )
    print(f"  eager: construct {eager['total']:.2f} s, peak RSS {eager['peak_mib']:.0f} MiB")
    print(
        f"  lazy:  construct {lazy['construct']:.2f} s "
        f"({lazy['construct'] / meta['construct']:.1f}x a meta-device build) + materialize "
        f"{lazy['total'] - lazy['construct']:.2f} s on {lazy['threads']} thread(s) = "
        f"{lazy['total']:.2f} s ({lazy['total'] / eager['total']:.2f}x eager), "
        f"peak RSS {lazy['peak_mib']:.0f} MiB"
    )
    print(f"  bit-identical tensors: {len(same)} of {total}")
    rng_same = lazy["rng"] == eager["rng"]
    print(f"  random generator after the build: {'as' if rng_same else 'NOT as'} eager leaves it")
    if len(same) != total:
        print("  DIFFERENT: " + ", ".join(sorted(set(eager["digests"]) - set(same))[:10]))
    return 0 if len(same) == total and rng_same else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dormant`` command.

    Example::

        $ dormant verify --size tiny
    """
    parser = argparse.ArgumentParser(prog="dormant", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check lazy == eager on a transformers Llama, with figures")
    v.add_argument("--size", choices=sorted(SIZES), default="small")
    v.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("_probe", help=argparse.SUPPRESS)
    p.add_argument("mode", choices=["eager", "lazy", "meta"])
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "verify":
        return verify(args.size, args.seed)
    print(json.dumps(_probe(args.mode, args.size, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
