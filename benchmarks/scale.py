"""One rank of 1 to 1,024: per-rank boost time and peak against the world size, fake process group.

Run: python benchmarks/scale.py [--worlds 1 8 64 1024] [--repeat 3] [--big-repeat 2]
         [--no-big] [--versions NAME=SRC ...] [--out FILE.md] [--raw FILE.jsonl]
         [--replay FILE.jsonl]  (the tables of an earlier --raw file, nothing run)
Quick check: python benchmarks/scale.py --worlds 8 --repeat 1 --no-big
Before and after a change, in one run: git archive BASE src | tar -x -C /tmp/before, then
         --versions before=/tmp/before/src after=src

A rank of any world size runs alone on PyTorch's fake process group (``FakeStore``, backend
``"fake"``): collectives do nothing, meshes and sharding are real, so a rank does exactly the
local work it would do on a cluster (the time collectives would take is not in the figures; the
report says what dormant's one collective costs). Each measurement is a fresh process,
``torch.set_num_threads(1)``, rank ``W // 2 + W // 8`` of world ``W`` (5 of 8, 640 of 1,024).
Two ways of getting the boosted model, launched alternately so that load from elsewhere hits
both alike:

- ``dormant``: ``LlamaForCausalLM(config)`` inside ``LazyInitContext``, then
  ``Booster(plugin=TorchFSDPPlugin()).boost(model)`` (exact: eager's values);
- ``meta recipe``: PyTorch's own: build under ``torch.device("meta")``, ``fully_shard`` each
  decoder layer and the root, ``to_empty(device="cpu")``, transformers' ``init_weights()`` (values
  not eager's).

Per process: construct and boost time (wall, and CPU time of the process, which the load of a
shared machine moves less), peak RSS growth over construct + boost (``VmHWM`` reset through
/proc/self/clear_refs just before, minus RSS before), the bytes of the rank's own shards, and
the time of each phase of the boost. The ``dormant`` process of the first repeat then builds the
model eagerly from the same seed and compares every local shard with the same rows,
``torch.equal`` (after the measurement: it does not count). The 69B Llama runs at 1,024 only
(a rank allocates its shards alone: about 257 MiB), with no eager reference.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import LLAMA, LLAMA_TINY
from sharded_boost import _meta_recipe, _status
from tables import MIB, emit

META = "meta recipe"
SEED = 0


def rank_of(world: int) -> int:
    return world // 2 + world // 8


# ---------------------------------------------------------------------------------------------
# Inside a measured process


class Phases:
    """CPU time spent in named functions (one thread: the machine's load moves it less than
    wall time), by wrapping them where the caller looks them up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, owner: Any, name: str, key: str | None = None) -> None:
        fn = getattr(owner, name)
        label = key or name

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.process_time() - start
                self.calls[label] += 1

        setattr(owner, name, timed)

    def clear(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def _watch_dormant(phases: Phases) -> None:
    from dormant import _mt19937, _rng
    from dormant.booster.plugin import sharding

    names = ("check_same_program", "init_device_mesh", "fully_shard", "to_meta", "to_empty")
    for name in (*names, "fill_local", "materialize"):
        phases.wrap(sharding, name)
    # Generator placement, within fill_local: long gaps jump, short ones draw.
    # (Private names in source trees from before they were made public, for --versions.)
    jump, poly = (
        ("block_ahead", "x_pow_mod")
        if hasattr(_mt19937, "x_pow_mod")
        else ("_block_ahead", "_x_pow_mod")
    )
    phases.wrap(_mt19937, jump, "  of which: jumps")
    phases.wrap(_mt19937, poly, "  of which: jump polynomials")
    phases.wrap(_rng.Position, "place", "  fill_local: generator placement")


def _watch_meta(phases: Phases) -> None:
    import sharded_boost
    import torch.distributed.device_mesh as device_mesh
    import torch.distributed.fsdp as fsdp
    from torch import nn

    phases.wrap(device_mesh, "init_device_mesh")
    phases.wrap(fsdp, "fully_shard")
    phases.wrap(nn.Module, "to_empty")
    phases.wrap(sharded_boost, "init_pass", "init_weights")


def _local_box(t: Any) -> tuple[Any, tuple[slice, ...]]:
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if not isinstance(t, DTensor):
        return t, tuple(slice(None) for _ in t.shape)
    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return t.to_local(), tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True))


def _compare_with_eager(model: Any, config: Any) -> dict[str, int]:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(SEED)
    eager = LlamaForCausalLM(config)
    want = dict(eager.named_parameters(remove_duplicate=False))
    want.update(eager.named_buffers())
    got = dict(model.named_parameters(remove_duplicate=False))
    got.update(model.named_buffers())
    equal = empty = 0
    for name, t in got.items():
        local, box = _local_box(t)
        equal += bool(torch.equal(local.detach(), want[name].detach()[box]))
        empty += local.numel() == 0
    return {"equal": equal, "tensors": len(got), "empty": empty}


def worker(spec: dict[str, Any], out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from transformers import LlamaConfig, LlamaForCausalLM

    import dormant
    from dormant.booster import Booster
    from dormant.booster.plugin import TorchFSDPPlugin

    torch.set_num_threads(1)
    world, way = spec["world"], spec["way"]
    dist.init_process_group("fake", store=FakeStore(), rank=rank_of(world), world_size=world)
    phases = Phases()
    lazy = way != META
    _watch_dormant(phases) if lazy else _watch_meta(phases)

    def build_and_boost(config: Any) -> Any:
        if lazy:
            with dormant.LazyInitContext():
                model = LlamaForCausalLM(config)
            built = time.perf_counter(), time.process_time()
            model, *_ = Booster(plugin=TorchFSDPPlugin()).boost(model)
        else:
            with torch.device("meta"):
                model = LlamaForCausalLM(config)
            built = time.perf_counter(), time.process_time()
            _meta_recipe(model, "fsdp")
        return model, built

    build_and_boost(LlamaConfig(**LLAMA_TINY))  # warm-up: load the code this way runs
    phases.clear()
    config = LlamaConfig(**LLAMA[spec["model"]])
    torch.manual_seed(SEED)
    status = Path("/proc/self/status")
    rss_before = _status(b"VmRSS", status.read_bytes())
    with contextlib.suppress(OSError):  # VmHWM := VmRSS (if refused: the peak since start)
        Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    model, (built, cpu_built) = build_and_boost(config)
    done, cpu_done = time.perf_counter(), time.process_time()
    peak = _status(b"VmHWM", status.read_bytes()) - rss_before
    tensors = [*model.parameters(), *model.buffers()]
    row = {
        **spec,
        "rank": rank_of(world),
        "construct_s": built - start,
        "boost_s": done - built,
        "boost_cpu_s": cpu_done - cpu_built,
        "peak_rss": peak,
        "local_bytes": sum(_local_box(t)[0].nbytes for t in tensors),
        "model_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "phases": dict(phases.seconds),
        "calls": dict(phases.calls),
    }
    if spec.get("check"):
        row["exact"] = _compare_with_eager(model, config)
    Path(out).write_text(json.dumps(row))
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# The driver


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        env["OMP_NUM_THREADS"] = "1"
        src = spec.get("src") or str(Path(__file__).resolve().parents[1] / "src")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        out = f"{tmp}/row.json"
        cmd = [sys.executable, __file__, "--worker", json.dumps(spec), out]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode or not os.path.exists(out):
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()] or ["?"]
            return {**spec, "error": f"failed (exit {proc.returncode}): {lines[-1][:200]}"}
        return json.loads(Path(out).read_text())


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def _phase_medians(rows: list[dict[str, Any]]) -> dict[str, float]:
    names = {k for r in rows for k in r["phases"]}
    return {k: statistics.median(r["phases"].get(k, 0.0) for r in rows) for k in names}


def tables(runs: dict[tuple[str, int, str], list[dict[str, Any]]], ways: list[str]) -> list[str]:
    lines = [
        "| model | world, rank | way | construct | boost: wall, CPU | / meta recipe: wall, CPU "
        "| peak growth (/ meta recipe) | own shards | shards == eager rows |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    keys = sorted({(m, w) for m, w, _ in runs}, key=lambda k: (k[0] != "llama-220m", k[1]))
    for model, world in keys:
        m = [r for r in runs.get((model, world, META), []) if "error" not in r]
        for way in ways:
            d = [r for r in runs.get((model, world, way), []) if "error" not in r]
            if not d:
                errors = [r.get("error", "") for r in runs.get((model, world, way), [])]
                lines.append(f"| {model} | {world} | {way} | {'; '.join(errors)[:200]} | | | | | |")
                continue
            wall, cpu, peak = (_median(d, k) for k in ("boost_s", "boost_cpu_s", "peak_rss"))
            ratio = growth = ""
            if m and way != META:
                ratio = (
                    f"{wall / _median(m, 'boost_s'):.2f}x, {cpu / _median(m, 'boost_cpu_s'):.2f}x"
                )
                meta_peak = _median(m, "peak_rss")
                growth = f" ({(peak - meta_peak) / meta_peak:+.0%})"
            exact = next((r["exact"] for r in d if "exact" in r), None)
            check = "no (not eager's values)" if way == META else "(no eager reference)"
            if exact:
                check = f"{exact['equal']} of {exact['tensors']} ({exact['empty']} empty here)"
            lines.append(
                f"| {model} | {world}, {d[0]['rank']} | {way} | {_median(d, 'construct_s'):.2f} s "
                f"| {wall:.3f} s, {cpu:.3f} s | {ratio} | {peak / MIB:.1f} MiB{growth} "
                f"| {d[0]['local_bytes'] / MIB:.1f} MiB | {check} |"
            )
    lines += ["", "Phases of the boost (CPU seconds, medians):", ""]
    lines += [
        "| model | world | way | phase | seconds | calls |",
        "| --- | --- | --- | --- | ---: | ---: |",
    ]
    for model, world in keys:
        for way in ways:
            rows = [r for r in runs.get((model, world, way), []) if "error" not in r]
            for name, seconds in sorted(_phase_medians(rows).items()) if rows else []:
                calls = rows[0]["calls"].get(name, 0)
                lines.append(f"| {model} | {world} | {way} | {name} | {seconds:.3f} | {calls} |")
    return lines


def parse_args() -> argparse.Namespace:
    assert __doc__
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", nargs="+", type=int, default=[1, 8, 64, 1024])
    parser.add_argument("--model", choices=[*LLAMA], default="llama-220m")
    parser.add_argument("--big-model", choices=[*LLAMA], default="llama-70b")
    parser.add_argument("--big-world", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--big-repeat", type=int, default=2)
    parser.add_argument("--no-big", action="store_true", help="leave out the 69B Llama")
    parser.add_argument(
        "--versions",
        nargs="+",
        default=[],
        metavar="NAME=SRC",
        help="measure dormant from each of these source trees (default: this checkout's src)",
    )
    parser.add_argument("--out", help="also write the tables to this markdown file")
    parser.add_argument("--raw", help="append every measurement to this JSON-lines file")
    parser.add_argument("--replay", help="make the tables from a --raw file, running nothing")
    return parser.parse_args()


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker(json.loads(sys.argv[2]), sys.argv[3])
        return
    args = parse_args()
    started, load = time.time(), os.getloadavg()[0]
    plan = [(args.model, w, r) for r in range(args.repeat) for w in args.worlds]
    if not args.no_big:
        plan += [(args.big_model, args.big_world, r) for r in range(args.big_repeat)]
    sources = dict(v.split("=", 1) for v in args.versions) or {"dormant": ""}
    names = {name: name if name == "dormant" else f"dormant {name}" for name in sources}
    ways = [*names.values(), META]
    runs: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    if args.replay:
        rows = [json.loads(line) for line in Path(args.replay).read_text().splitlines()]
        ways = [*dict.fromkeys(r["way"] for r in rows if r["way"] != META), META]
        plan = []
        for r in rows:
            runs[(r["model"], r["world"], r["way"])].append(r)
    for model, world, repeat in plan:
        for way in ways:  # alternating, so that load from elsewhere hits every way alike
            src = next((str(Path(sources[n]).resolve()) for n, w in names.items() if w == way), "")
            check = way != META and repeat == 0 and model == args.model
            spec = {"model": model, "world": world, "way": way, "check": check, "src": src}
            row = measure(spec)
            runs[(model, world, way)].append(row)
            shown = row.get("error") or (
                f"boost {row['boost_s']:.3f} s (CPU {row['boost_cpu_s']:.3f} s), "
                f"peak +{row['peak_rss'] / MIB:.0f} MiB"
            )
            print(f"  {model} world {world} {way}: {shown}", file=sys.stderr, flush=True)
            if args.raw:
                with open(args.raw, "a") as f:
                    f.write(json.dumps(row) + "\n")
    lines = [
        f"One rank per process on the fake process group, one thread; medians of {args.repeat} "
        f"launches per way ({args.big_repeat} for {args.big_model}), alternating. Ratios are "
        "to the meta recipe of the same world.",
        "",
        *tables(runs, ways),
        "",
        f"Replayed from {args.replay}."
        if args.replay
        else f"Load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (on "
        f"{os.cpu_count()} cores); {time.time() - started:.0f} s in all.",
    ]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
