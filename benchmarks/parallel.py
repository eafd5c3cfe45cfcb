"""Exact construct + materialize against eager construction, by replay thread count.

Usage (from the repository root, main venv):

    python benchmarks/parallel.py --models llama-220m,vit-b,unet-sd-half --threads 1,0 --repeat 3

``--threads 0`` is materialize's default (``torch.get_num_threads()``). Each measurement runs in
a fresh process forked from a template that only imported the libraries (as bench.py does):
``torch.set_num_threads(2)``, a tiny warm-up build of the same family by the same system, then
RSS is read, the model is built from ``manual_seed(0)`` and timed, and the peak is ``VmHWM``
minus that RSS. Systems alternate within each repeat, so every ratio is to an eager build of the
same repeat; the table shows medians, and the CPU time of all the process's threads (on a
busy machine wall time shows how much CPU the build got, CPU time what it needed). Nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import _maxrss, _preload, _rss, _trim
from models import MODELS, Model

SEED = 0
TORCH_THREADS = 2


def _build(system: str, spec: Model, tiny: bool) -> tuple[Any, dict[str, float]]:
    import torch

    build = spec.tiny if tiny else spec.build
    torch.manual_seed(SEED)
    c0, t0 = time.process_time(), time.perf_counter()
    if system == "eager":
        model = build()
        return model, {"total_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    from dormant import LazyInitContext, materialize

    threads = int(system.split("-t")[1])
    with LazyInitContext():
        model = build()
    t1 = time.perf_counter()
    kwargs = {"threads": threads} if threads else {}
    materialize(model, progress=False, **kwargs)
    t2 = time.perf_counter()
    times = {"construct_s": t1 - t0, "materialize_s": t2 - t1, "total_s": t2 - t0}
    return model, {**times, "cpu_s": time.process_time() - c0}


def _measure(system: str, model_name: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(TORCH_THREADS)
    spec = MODELS[model_name]
    warm, _ = _build(system, spec, tiny=True)
    del warm
    _trim()
    before = _rss()
    model, r = _build(system, spec, tiny=False)
    r["peak"] = _maxrss() - before
    r["state"] = torch.get_rng_state().sum().item()  # where the build left the generator
    del model
    return r


def _forked(system: str, model_name: str) -> dict[str, Any]:
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            res = _measure(system, model_name)
        except BaseException as e:
            res = {"error": f"{type(e).__name__}: {e}"}
        with open(path, "w") as f:
            json.dump(res, f)
        os._exit(0)
    os.waitpid(pid, 0)
    with open(path) as f:
        res = json.load(f)
    os.unlink(path)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="llama-220m,vit-b,unet-sd-half")
    p.add_argument("--threads", default="1,0", help="materialize thread counts; 0: the default")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    _preload("main")
    systems = ["eager"] + [f"dormant-t{t}" for t in args.threads.split(",")]
    for name in args.models.split(","):
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
        for i in range(args.repeat):
            order = systems if i % 2 == 0 else systems[::-1]  # alternate who goes first
            for s in order:
                res = _forked(s, name)
                if "error" in res:
                    raise SystemExit(f"{name} {s}: {res['error']}")
                runs[s].append(res)
                print(f"  {name} {s} run {i}: {res}", file=sys.stderr, flush=True)
        print(f"\n{MODELS[name].label}, median of {args.repeat}, torch threads {TORCH_THREADS}")
        head = ["system", "total s", "construct s", "materialize s", "CPU s", "x eager time"]
        print("| " + " | ".join([*head, "x eager peak"]) + " |")
        print("|" + " --- |" * (len(head) + 1))
        for s in systems:
            rs = runs[s]
            t = [r["total_s"] / e["total_s"] for r, e in zip(rs, runs["eager"])]
            m = [r["peak"] / e["peak"] for r, e in zip(rs, runs["eager"])]
            med = {k: statistics.median(r.get(k, 0.0) for r in rs) for k in rs[0]}
            cells = [f"{med.get(k, 0.0):.2f}" for k in ("total_s", "construct_s", "materialize_s")]
            cells += [f"{med['cpu_s']:.2f}", f"{statistics.median(t):.2f}"]
            print(f"| {s} | " + " | ".join(cells) + f" | {statistics.median(m):.3f} |")
        states = {s: {r["state"] for r in runs[s]} for s in systems}
        print(f"generator state checksums: {states}")


if __name__ == "__main__":
    main()
