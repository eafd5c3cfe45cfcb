"""Sharded boost: per-rank peak memory and time, against eager + FSDP2 and PyTorch's meta recipe.

Run: python benchmarks/sharded_boost.py [--models llama-220m] [--ranks 2 4] [--repeat 2]
         [--sections grid wide big projection] [--out FILE.md] [--raw FILE.jsonl]
         [--replay FILE.jsonl]  (the tables of an earlier --raw file, nothing run)
Quick check: python benchmarks/sharded_boost.py --sections grid --ranks 2 --models llama-220m
         --repeat 1

Each measurement is a fresh process (torchrun for the sharded ones, gloo on CPU,
``torch.set_num_threads(1)`` per rank). Ways of getting the boosted model:

- ``eager``: ``LlamaForCausalLM(config)``, then ``Booster(plugin).boost(model)``;
- ``lazy``: the same build inside ``LazyInitContext``, then boost (exact: eager's values);
- ``from_pretrained`` / ``from_pretrained, lazy``: transformers' ``from_pretrained`` of a
  safetensors checkpoint (written once per model), without and inside the context, then boost;
- ``meta recipe``: PyTorch's own way: build under ``torch.device("meta")``, ``fully_shard`` each
  decoder layer and the root (TP x FSDP: ``parallelize_module`` with the plugin's plan first),
  ``model.to_empty(device="cpu")``, then transformers' ``init_weights()``. Fast but not exact:
  its values are not eager's (and on a CPU mesh DTensor's random ops give every rank the same
  local draws);
- ``floor``: no model at all: each rank draws ``normal_`` into fresh memory the size of its 1/N of
  every parameter, nothing else (no jumps, no FSDP2). No way of computing the shards pays less:
  the time every exact or inexact way is bounded by on this machine;
- ``lazy, a tiny Llama``: what boosting costs whatever the model (process group, FSDP state);
- and, single process in the same run, the baselines of the time ratios: ``materialize`` (lazy
  build, then ``dormant.materialize``: the exact single-process path) and ``eager``.

Memory, per rank, over construct + boost, as growth above the process after imports and a
warm-up: peak RSS (``VmHWM`` of /proc/self/status, reset through /proc/self/clear_refs just
before) and peak anonymous memory (``RssAnon``, sampled every millisecond by a thread, so the page
cache of a memory-mapped checkpoint does not count; a sample can miss a spike shorter than the
period, so it is a lower bound where RSS is the upper one). The figure of a launch is its largest
rank; the table shows the median over ``--repeat`` launches, as a share of the model's fp32 bytes,
beside the ideal (the bytes of the rank's own shards after boost, about model / N) and the target
of issue 12 (model / N + 5% of the model). Allocator: glibc as users have it (no ``MALLOC_*``
variable, the main figure), and beside it ``MALLOC_MMAP_THRESHOLD_=65536`` (a tuning users rarely
set, which keeps freed large blocks out of the heap).

Time, default allocator: construct and boost wall time of each rank, the slowest rank, medians,
as ratios to the single-process exact materialization measured in the same run (launches are
interleaved repeat by repeat so that load from elsewhere hits every way alike). Ranks beyond the
machine's cores share them: those times are not per-rank work.

Sections: ``grid`` (``--models`` x ``--ranks``, TorchFSDPPlugin, and HybridParallelPlugin
(tp_size=2) at each world of 4 or more), ``wide`` (``--wide-ranks``, memory only), ``big``
(``--big-model`` at ``--big-ranks``, no checkpoint ways) and ``projection`` (a 70B Llama on 64
ranks, computed from per-element costs measured here: nothing that large is run).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import LLAMA, LLAMA_TINY, init_pass
from tables import MIB, emit

GIB = 2**30
PLUGINS = {"fsdp": "TorchFSDPPlugin", "tp2": "HybridParallelPlugin(tp_size=2)"}
FLOOR = "floor: own shards' random numbers alone"
MODES = ("eager", "lazy", "from_pretrained", "from_pretrained, lazy", "meta recipe", FLOOR)
TINY = "lazy, a tiny Llama"
SINGLE = ("materialize", "eager")  # single-process baselines
EXACT = {"eager": "yes", "lazy": "yes", "from_pretrained": "yes", "from_pretrained, lazy": "yes",
         "meta recipe": "no", TINY: "yes", FLOOR: "no"}  # fmt: skip
# Figures under the allocator users have (glibc's defaults), and beside them with a fixed mmap
# threshold, which keeps freed large blocks from staying in the heap (a tuning users rarely set).
ALLOCATORS = {"default": {}, "MALLOC_MMAP_THRESHOLD_=65536": {"MALLOC_MMAP_THRESHOLD_": "65536"}}
TUNED = "MALLOC_MMAP_THRESHOLD_=65536"
TARGET_SLACK = 0.05  # issue 12: per-rank peak growth <= model / N + 5% of the model
# The machine is shared: a launch is not started unless its guessed need leaves SPARE free, and
# is stopped when the machine's available memory falls below MIN_AVAILABLE.
SPARE = 4 * GIB
MIN_AVAILABLE = 2 * GIB


def llama_config(size: str) -> dict[str, int]:
    return LLAMA_TINY if size == "tiny" else LLAMA[size]


# ---------------------------------------------------------------------------------------------
# Inside a measured process


def _status(field: bytes, raw: bytes) -> int:
    """A ``kB`` field of /proc/self/status, in bytes."""
    i = raw.index(field + b":")
    return int(raw[i + len(field) + 1 : raw.index(b"kB", i)]) * 1024


class Sampler:
    """Peak ``RssAnon`` over a stretch of code, sampled every millisecond by a thread."""

    def __init__(self) -> None:
        self.fd = os.open("/proc/self/status", os.O_RDONLY)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self, field: bytes = b"RssAnon") -> int:
        return _status(field, os.pread(self.fd, 8192, 0))

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self.read())

    def __enter__(self) -> Sampler:
        self.peak = self.read()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())


def _meta_recipe(model: Any, plugin: str) -> None:
    """PyTorch's recipe: shard the meta model, allocate each rank's shards, run the model's init."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    from dormant.booster.plugin.tp_plans import plan_for

    world = dist.get_world_size()
    if plugin == "tp2":
        mesh = init_device_mesh("cpu", (world // 2, 2), mesh_dim_names=("dp", "tp"))
        parallelize_module(model, mesh["tp"], plan_for(model))
        dp = mesh["dp"]
    else:
        dp = init_device_mesh("cpu", (world,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=dp)
    fully_shard(model, mesh=dp)
    model.to_empty(device="cpu")
    with torch.no_grad():
        init_pass(model, "transformers")


def worker(spec: dict[str, Any], out: str) -> None:
    """One measured process: build (``spec["mode"]``), boost or materialize, write a JSON line."""
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    import dormant
    from dormant.booster import Booster
    from dormant.booster.plugin import HybridParallelPlugin, TorchFSDPPlugin

    torch.set_num_threads(1)
    dormant.launch(seed=0)
    mode, plugin = spec["mode"], spec["plugin"]
    with dormant.LazyInitContext():  # warm-up: load the code every way uses
        warm = LlamaForCausalLM(LlamaConfig(**LLAMA_TINY))
    dormant.materialize(warm)
    del warm
    config = LlamaConfig(**llama_config("tiny" if mode == TINY else spec["model"]))
    sampler = Sampler()
    rss_before, anon_before = sampler.read(b"VmRSS"), sampler.read()
    # VmHWM := VmRSS; if refused, VmHWM is the peak since start, which can only overstate
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    with sampler:
        start = time.perf_counter()
        if mode in ("lazy", TINY, "materialize"):
            with dormant.LazyInitContext():
                model = LlamaForCausalLM(config)
        elif mode == "eager":
            model = LlamaForCausalLM(config)
        elif mode == "from_pretrained":
            model = AutoModelForCausalLM.from_pretrained(spec["checkpoint"])
        elif mode == "from_pretrained, lazy":
            with dormant.LazyInitContext():
                model = AutoModelForCausalLM.from_pretrained(spec["checkpoint"])
        elif mode in ("meta recipe", FLOOR):
            with torch.device("meta"):
                model = LlamaForCausalLM(config)
        else:
            raise ValueError(mode)
        built = time.perf_counter()
        if plugin == "none":
            if mode == "materialize":
                dormant.materialize(model)
        elif mode == "meta recipe":
            _meta_recipe(model, plugin)
        elif mode == FLOOR:  # what any way of computing a rank's shards pays at least
            world = dist.get_world_size()
            floor = [torch.empty(-(-p.numel() // world)).normal_() for p in model.parameters()]
        else:
            made = TorchFSDPPlugin() if plugin == "fsdp" else HybridParallelPlugin(tp_size=2)
            model, *_ = Booster(plugin=made).boost(model)
        done = time.perf_counter()
    peak_rss = sampler.read(b"VmHWM") - rss_before
    # DTensor parameters report their global size: count the model once.
    params = list(model.parameters())
    local = sum(
        (p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size()
        for p in [*params, *model.buffers()]
    )
    if mode == FLOOR:
        local = sum(t.numel() * t.element_size() for t in floor)
    rank = dist.get_rank()
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(
            {
                "peak_rss": peak_rss,
                "peak_anon": sampler.peak - anon_before,
                "construct_s": built - start,
                "boost_s": done - built,
                "model_bytes": sum(p.numel() for p in params) * 4,
                "local_bytes": local,
            },
            f,
        )
    dist.barrier()
    dist.destroy_process_group()


def write_checkpoint(size: str, path: str) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**llama_config(size))).save_pretrained(path)


# ---------------------------------------------------------------------------------------------
# The driver


def _available() -> int:
    return _status(b"MemAvailable", Path("/proc/meminfo").read_bytes())


def _run_watched(cmd: list[str], env: dict[str, str]) -> str | None:
    """Run ``cmd``; None when it succeeds, else why not. Stopped when memory runs short."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
        low = False
        while proc.poll() is None:
            if _available() < MIN_AVAILABLE:
                low = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.2)
        if low:
            return f"stopped: the machine's available memory fell below {MIN_AVAILABLE // GIB} GiB"
        if proc.returncode:
            log.seek(0)
            lines = [ln for ln in log.read().decode(errors="replace").splitlines() if ln.strip()]
            err = [ln for ln in lines if "Error" in ln or "error" in ln] or lines or ["?"]
            return f"failed (exit {proc.returncode}): {err[-1].strip()[:200]}"
    return None


def measure(spec: dict[str, Any], nproc: int, allocator: str) -> dict[str, Any]:
    """One launch: ``nproc`` ranks (0: a single plain process). The slowest / largest rank."""
    with tempfile.TemporaryDirectory() as out:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        env.update(OMP_NUM_THREADS="1", **ALLOCATORS[allocator])
        src = str(Path(__file__).resolve().parents[1] / "src")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        args = [__file__, "--worker", json.dumps(spec), out]
        if nproc:
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                   "--standalone", *args]  # fmt: skip
        else:
            cmd = [sys.executable, *args]
        error = _run_watched(cmd, env)
        ranks = []
        for r in range(max(nproc, 1)):
            if not error and not os.path.exists(f"{out}/rank{r}.json"):
                error = f"failed: rank {r} wrote nothing"
            if error:
                break
            with open(f"{out}/rank{r}.json") as f:
                ranks.append(json.load(f))
    row: dict[str, Any] = {**spec, "ranks": nproc or 1, "allocator": allocator}
    if error:
        return {**row, "error": error}
    return {
        **row,
        "peak_rss": max(r["peak_rss"] for r in ranks),
        "peak_anon": max(r["peak_anon"] for r in ranks),
        "construct_s": max(r["construct_s"] for r in ranks),
        "boost_s": max(r["boost_s"] for r in ranks),
        "model_bytes": ranks[0]["model_bytes"],
        "local_bytes": max(r["local_bytes"] for r in ranks),
    }


FIELDS = ("peak_rss", "peak_anon", "construct_s", "boost_s", "model_bytes", "local_bytes")


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"] if runs else "not run"}
    return {k: statistics.median(r[k] for r in ok) for k in FIELDS} | {"runs": len(ok)}


class Results:
    """Every measurement, keyed by (model, plugin, ranks, allocator, mode)."""

    def __init__(self, raw: str | None, replay: str | None = None) -> None:
        self.runs: dict[tuple[str, str, int, str, str], list[dict[str, Any]]] = {}
        self.raw = raw
        # --replay: the rows of an earlier --raw file stand in for the launches, in order
        self.recorded: dict[tuple[str, str, int, str, str], list[dict[str, Any]]] | None = None
        self.projection: dict[str, Any] | None = None
        self.run: dict[str, Any] | None = None
        if replay:
            self.recorded = {}
            for line in Path(replay).read_text().splitlines():
                r = json.loads(line)
                if r.get("kind") == "projection":
                    self.projection = r
                    continue
                if r.get("kind") == "run":
                    self.run = r
                    continue
                key = (r["model"], r["plugin"], r["ranks"], r["allocator"], r["mode"])
                self.recorded.setdefault(key, []).append(r)

    def record(self, row: dict[str, Any]) -> None:
        if self.raw:
            with open(self.raw, "a") as f:
                f.write(json.dumps(row) + "\n")

    def add(self, spec: dict[str, Any], nproc: int, allocator: str) -> None:
        key = (spec["model"], spec["plugin"], nproc or 1, allocator, spec["mode"])
        need = 0.0 if self.recorded is not None else self.need(spec, nproc or 1)
        if self.recorded is not None:
            left = self.recorded.get(key)
            row = left.pop(0) if left else {**spec, "error": "not in the replayed file"}
        elif need > _available() - SPARE:
            row = {**spec, "ranks": nproc or 1, "allocator": allocator,
                   "error": f"not run: needs about {need / GIB:.0f} GiB, "
                            f"{_available() / GIB:.0f} GiB available"}  # fmt: skip
        else:
            row = measure(spec, nproc, allocator)
        self.runs.setdefault(key, []).append(row)
        status = row.get("error") or (
            f"peak {row['peak_rss'] / MIB:.0f} MiB RSS, {row['peak_anon'] / MIB:.0f} MiB anon, "
            f"{row['construct_s']:.2f} + {row['boost_s']:.2f} s"
        )
        print(f"  {key}: {status}", file=sys.stderr, flush=True)
        self.record(row)

    def need(self, spec: dict[str, Any], ranks: int) -> float:
        """A generous guess of the memory a launch takes (the machine is shared): the largest
        per-rank share of the model measured so far for this way at this world, with a margin;
        before any, a rank holding the model and half of it again."""
        if spec["model"] == "tiny":
            return 0.0
        shares = [
            r["peak_rss"] / r["model_bytes"]
            for (_, plugin, n, _, mode), rows in self.runs.items()
            for r in rows
            if "error" not in r and (plugin, n, mode) == (spec["plugin"], ranks, spec["mode"])
        ]
        share = 1.15 * max(shares) if shares else 1.5
        return share * model_bytes(spec["model"]) * ranks

    def get(self, model: str, plugin: str, ranks: int, allocator: str, mode: str) -> dict:
        return median(self.runs.get((model, plugin, ranks, allocator, mode), []))


def _x(value: float, model: float) -> str:
    return f"{value / MIB:.0f} ({value / model:.2f}x)"


def memory_rows(res: Results, model: str, plugin: str, ranks: int, modes: list[str]) -> list[str]:
    rows = []
    for mode in modes:
        size = "tiny" if mode == TINY else model
        d, t = (res.get(size, plugin, ranks, a, mode) for a in ("default", TUNED))
        ref = d if "error" not in d else t
        if "error" in ref:
            rows.append(f"| {PLUGINS[plugin]} | {ranks} | {mode} | {ref['error']} | | | | | |")
            continue
        mb = res.get(model, plugin, ranks, "default", "lazy").get("model_bytes", ref["model_bytes"])
        target = mb / ranks + TARGET_SLACK * mb
        cells = []
        for m in (d, t):
            if "error" in m:
                cells += [m["error"], ""]
            else:
                cells += [_x(m["peak_rss"], mb), _x(m["peak_anon"], mb)]
        meets = ""
        if mode != TINY and "error" not in d:
            meets = "yes" if d["peak_anon"] <= target else "no"
            if ref["local_bytes"] > target:  # the layout's own shards alone exceed model / N
                own = ref["local_bytes"] + TARGET_SLACK * mb
                meets += f"; own shards + 5% ({own / mb:.2f}x): "
                meets += "yes" if d["peak_anon"] <= own else "no"
        ideal = "" if mode == TINY else _x(ref["local_bytes"], mb)
        rows.append(
            f"| {PLUGINS[plugin]} | {ranks} | {mode} | {' | '.join(cells)} | {ideal} "
            f"| {'' if mode == TINY else _x(target, mb)} | {meets} |"
        )
    return rows


MEMORY_HEAD = [
    "| plugin | ranks | model from | peak RSS MiB (x model) | peak RssAnon MiB (x model) "
    f"| {TUNED}: RSS | {TUNED}: RssAnon | ideal: own shards | target: model/N + 5% "
    "| default allocator, RssAnon within target |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
]


def time_rows(res: Results, model: str, plugin: str, ranks: int, modes: list[str]) -> list[str]:
    base = res.get(model, "none", 1, "default", "materialize")
    rows = []
    for mode in modes:
        m = res.get(model, plugin, ranks, "default", mode)
        if "error" in m:
            rows.append(f"| {PLUGINS[plugin]} | {ranks} | {mode} | {m['error']} | | | | |")
            continue
        ratio, total = "", ""
        if "error" not in base:
            ratio = f"{m['boost_s'] / base['boost_s']:.2f}x"
            whole = m["construct_s"] + m["boost_s"]
            total = f"{whole / (base['construct_s'] + base['boost_s']):.2f}x"
        rows.append(
            f"| {PLUGINS[plugin]} | {ranks} | {mode} | {m['construct_s']:.2f} | {m['boost_s']:.2f} "
            f"| {ratio} | {total} | {EXACT[mode]} |"
        )
    return rows


TIME_HEAD = [
    "| plugin | ranks | model from | construct s | boost s | boost / 1-process materialize "
    "| construct + boost / 1-process construct + materialize | exact |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
]


def baseline_rows(res: Results, model: str) -> list[str]:
    rows = []
    for mode in SINGLE:
        m = res.get(model, "none", 1, "default", mode)
        if "error" in m:
            rows.append(f"| 1 process | 1 | {mode} | {m['error']} | | | | |")
            continue
        what = "lazy build, then materialize" if mode == "materialize" else "eager build"
        rows.append(
            f"| 1 process | 1 | {what} | {m['construct_s']:.2f} | {m['boost_s']:.2f} | "
            f"{'1.00x' if mode == 'materialize' else ''} | "
            f"{'1.00x' if mode == 'materialize' else ''} | yes |"
        )
    return rows


def single_memory_rows(res: Results, model: str) -> list[str]:
    rows = []
    for mode in SINGLE:
        d, t = (res.get(model, "none", 1, a, mode) for a in ("default", TUNED))
        if "error" in d or "error" in t:
            rows.append(f"| 1 process | 1 | {mode} | {d.get('error') or t.get('error')} |||||||")
            continue
        mb = d["model_bytes"]
        cells = [_x(m[k], mb) for m in (d, t) for k in ("peak_rss", "peak_anon")]
        rows.append(f"| 1 process | 1 | {mode} | {' | '.join(cells)} | {_x(mb, mb)} | | |")
    return rows


def worlds(args: argparse.Namespace) -> list[tuple[str, int]]:
    return [("fsdp", n) for n in args.ranks] + [("tp2", n) for n in args.ranks if n >= 4]


def run_grid(res: Results, args: argparse.Namespace, checkpoints: dict[str, str]) -> list[str]:
    for rep in range(args.repeat):
        for model in args.models:
            print(f"grid: {model}, repeat {rep + 1}/{args.repeat}", file=sys.stderr, flush=True)
            for allocator in ALLOCATORS:
                for mode in SINGLE:
                    res.add({"mode": mode, "model": model, "plugin": "none"}, 0, allocator)
                for plugin, n in worlds(args):
                    for mode in (*MODES, TINY):
                        size = "tiny" if mode == TINY else model
                        path = checkpoints.get(model, "")
                        spec = {"mode": mode, "model": size, "plugin": plugin, "checkpoint": path}
                        res.add(spec, n, allocator)
    lines = []
    for model in args.models:
        mb = res.get(model, "none", 1, "default", "materialize").get("model_bytes", 0)
        lines += [
            f"### `{model}` ({mb / 4 / 1e6:,.0f}M parameters, {mb / MIB:,.0f} MiB fp32): memory",
            "",
            *MEMORY_HEAD,
            *single_memory_rows(res, model),
        ]
        for plugin, n in worlds(args):
            lines += memory_rows(res, model, plugin, n, [*MODES, TINY])
        lines += ["", f"### `{model}`: time (default allocator)", "", *TIME_HEAD]
        lines += baseline_rows(res, model)
        for plugin, n in worlds(args):
            lines += time_rows(res, model, plugin, n, list(MODES))
        lines.append("")
    return lines


def run_wide(res: Results, args: argparse.Namespace) -> list[str]:
    model = args.models[0]
    modes = ["eager", "lazy", TINY]
    for rep in range(args.repeat):
        print(f"wide: {args.wide_ranks} ranks, repeat {rep + 1}", file=sys.stderr, flush=True)
        for n in args.wide_ranks:
            for allocator in ALLOCATORS:
                for mode in modes:
                    size = "tiny" if mode == TINY else model
                    res.add({"mode": mode, "model": size, "plugin": "fsdp"}, n, allocator)
    lines = [
        f"### `{model}` at {', '.join(map(str, args.wide_ranks))} ranks: memory only "
        f"(more ranks than the machine's {os.cpu_count()} cores)",
        "",
        *MEMORY_HEAD,
    ]
    for n in args.wide_ranks:
        lines += memory_rows(res, model, "fsdp", n, modes)
    return [*lines, ""]


def run_big(res: Results, args: argparse.Namespace) -> list[str]:
    model, n = args.big_model, args.big_ranks
    modes = ["lazy", "meta recipe", "eager"]
    for rep in range(args.repeat):
        print(f"big: {model} at {n} ranks, repeat {rep + 1}", file=sys.stderr, flush=True)
        for allocator in ALLOCATORS:
            res.add({"mode": "materialize", "model": model, "plugin": "none"}, 0, allocator)
            for mode in modes:
                spec = {"mode": mode, "model": model, "plugin": "fsdp"}
                res.add(spec, n, allocator)
            res.add({"mode": TINY, "model": "tiny", "plugin": "fsdp"}, n, "default")
    lines = [f"### `{model}` at {n} ranks (TorchFSDPPlugin)", "", *MEMORY_HEAD]
    lines += single_memory_rows(res, model)[:1]
    lines += memory_rows(res, model, "fsdp", n, modes)
    lines += ["", *TIME_HEAD, *baseline_rows(res, model)[:1]]
    lines += time_rows(res, model, "fsdp", n, modes)
    return [*lines, ""]


# ---------------------------------------------------------------------------------------------
# The 70B projection


@functools.cache
def model_bytes(size: str) -> int:
    """fp32 bytes of the parameters, from a build on the meta device."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**llama_config(size)))
    return 4 * sum(p.numel() for p in model.parameters())


def _timed(fn: Any, repeat: int) -> float:
    times, kept = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        kept.append(fn())  # kept: each call writes fresh pages, as a new shard does
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_element_costs(shard: int, repeat: int) -> dict[str, float]:
    """Seconds per element of writing a new ``shard``-element tensor (allocation and page faults
    included), and seconds of one jump of the generator."""
    import torch

    from dormant._mt19937 import advance

    torch.set_num_threads(1)
    torch.manual_seed(0)
    costs = {
        "normal_": _timed(lambda: torch.empty(shard).normal_(0, 0.02), repeat) / shard,
        "uniform_": _timed(lambda: torch.empty(shard).uniform_(-0.01, 0.01), repeat) / shard,
        "fill_": _timed(lambda: torch.empty(shard).fill_(1.0), repeat) / shard,
    }
    state = torch.get_rng_state()
    # A jump to an offset never asked before (x^J mod P computed afresh: different offsets in a
    # real build), and again to one already asked (the polynomial cached).
    offsets = iter(range(10**9 + 7, 10**9 + 7 + 1000 * repeat * 624, 1000 * 624))
    costs["jump"] = _timed(lambda: advance(state, next(offsets)), repeat)
    advance(state, 3 * 10**9)
    costs["jump, cached"] = _timed(lambda: advance(state, 3 * 10**9), repeat)
    return costs


LAZY_CONSTRUCT = """
import json, sys, time, torch
sys.path.insert(0, sys.argv[2])
from models import LLAMA, LLAMA_TINY
from transformers import LlamaConfig, LlamaForCausalLM
import dormant
torch.set_num_threads(1)
with dormant.LazyInitContext():
    LlamaForCausalLM(LlamaConfig(**LLAMA_TINY))
fd = open("/proc/self/status", "rb")
def anon():
    fd.seek(0); raw = fd.read(); i = raw.index(b"RssAnon:")
    return int(raw[i + 8:raw.index(b"kB", i)]) * 1024
before = anon()
start = time.perf_counter()
with dormant.LazyInitContext():
    model = LlamaForCausalLM(LlamaConfig(**LLAMA[sys.argv[1]]))
print(json.dumps({"s": time.perf_counter() - start, "bytes": anon() - before}))
"""


def run_projection(res: Results, args: argparse.Namespace) -> list[str]:
    import torch
    from torch import nn
    from transformers import LlamaConfig, LlamaForCausalLM

    n, name = args.projection_ranks, args.projection_model
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**llama_config(name)))
    # transformers' Llama init: normal_ for every Linear and Embedding weight, fill_ for the norms.
    random_t = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    ids = {id(p) for p in random_t}
    filled = [p for p in model.parameters() if id(p) not in ids]

    def shard(p: torch.Tensor) -> int:  # FSDP2: dim 0 in chunks of ceil(rows / n); rank 0's
        return -(-p.shape[0] // n) * (p.numel() // p.shape[0])

    total = sum(p.numel() for p in model.parameters())
    rand_rank = sum(shard(p) for p in random_t)
    fill_rank = sum(shard(p) for p in filled)
    largest_shard = max(shard(p) for p in model.parameters())
    largest_full = max(p.numel() for p in model.parameters())
    typical = shard(max(random_t, key=lambda p: p.numel()))
    if res.projection and res.projection["model"] == name:
        costs, construct = res.projection["costs"], res.projection["construct"]
    else:
        costs = per_element_costs(typical, max(3, args.repeat * 3))
        proc = subprocess.run(
            [sys.executable, "-c", LAZY_CONSTRUCT, name, str(Path(__file__).resolve().parent)],
            capture_output=True, text=True, check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        construct = json.loads(proc.stdout.strip().splitlines()[-1])
    res.record({"kind": "projection", "model": name, "costs": costs, "construct": construct})
    fixed = res.get("tiny", "fsdp", max(args.ranks), "default", TINY)
    fixed_b = 0 if "error" in fixed else fixed["peak_rss"]
    jumps = len(random_t) + 1  # one to each live random tensor's slice, one to eager's end point
    shard_s = rand_rank * costs["normal_"] + fill_rank * costs["fill_"] + jumps * costs["jump"]
    today_s = (total - sum(p.numel() for p in filled)) * costs["normal_"]
    model_b, own_b = 4 * total, 4 * (rand_rank + fill_rank)
    shard_b = own_b + 4 * largest_shard + construct["bytes"] + fixed_b
    today_b = own_b + 4 * largest_full + construct["bytes"] + fixed_b
    target = model_b / n + TARGET_SLACK * model_b
    ns = {k: v * 1e9 for k, v in costs.items() if not k.startswith("jump")}
    return [
        f"### `{name}` on {n} ranks (TorchFSDPPlugin): computed, not run",
        "",
        f"{total / 1e9:.1f}B parameters ({model_b / GIB:.0f} GiB fp32), {len(random_t)} tensors "
        f"drawn with `normal_`, {len(filled)} filled. Measured here, one thread, median of "
        f"{max(3, args.repeat * 3)}: a fresh {typical:,}-element tensor (the largest shard of a "
        f"random tensor) costs {ns['normal_']:.2f} ns per element with `normal_`, "
        f"{ns['uniform_']:.2f} with `uniform_`, {ns['fill_']:.2f} with `fill_`; a jump of the "
        f"generator to a new offset {costs['jump'] * 1e3:.1f} ms "
        f"({costs['jump, cached'] * 1e3:.1f} ms to an offset already jumped to); building the "
        f"model in `LazyInitContext` {construct['s']:.2f} s and {construct['bytes'] / MIB:.0f} "
        f"MiB of graph. Fixed cost of a boost (tiny Llama, {max(args.ranks)} ranks, measured "
        f"above): {fixed_b / MIB:.0f} MiB. Not counted: FSDP's own bookkeeping and "
        "communication, the boost's cross-rank checks.",
        "",
        "| per rank (the largest rank) | shard only: each rank draws its own slice | "
        "today: each rank computes every full tensor, keeps its slice (at best) | how |",
        "| --- | --- | --- | --- |",
        f"| own shards | {own_b / GIB:.2f} GiB | {own_b / GIB:.2f} GiB | "
        "FSDP2 dim-0 chunks of every parameter, fp32 |",
        f"| largest transient | {4 * largest_shard / MIB:.0f} MiB (one shard) | "
        f"{4 * largest_full / MIB:.0f} MiB (one full tensor) | |",
        f"| peak growth | {shard_b / GIB:.2f} GiB ({shard_b / model_b:.4f}x model) | "
        f"{today_b / GIB:.2f} GiB ({today_b / model_b:.4f}x model) | shards + transient + lazy "
        f"graph + fixed cost; ideal model/N = {model_b / n / GIB:.2f} GiB, target model/N + 5% "
        f"= {target / GIB:.2f} GiB |",
        f"| values | {shard_s:.1f} s | {today_s:.0f} s | shard-only: normal_ of own slices + "
        f"fill_ + {jumps} jumps ({jumps * costs['jump']:.1f} s of it); today: normal_ of every "
        "full tensor (dead draws already jumped) |",
        f"| construct | {construct['s']:.2f} s | {construct['s']:.2f} s | measured |",
        "",
    ]


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    assert __doc__
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sizes = [*LLAMA]
    parser.add_argument("--models", nargs="+", choices=sizes, default=["llama-220m"])
    parser.add_argument("--ranks", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--wide-ranks", nargs="*", type=int, default=[8])
    parser.add_argument("--big-model", choices=sizes, default="llama-1b")
    parser.add_argument("--big-ranks", type=int, default=4)
    parser.add_argument("--projection-model", choices=sizes, default="llama-70b")
    parser.add_argument("--projection-ranks", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=["grid", "wide", "big", "projection"],
        default=["grid", "wide", "big", "projection"],
    )
    parser.add_argument("--out", help="also write the tables to this markdown file")
    parser.add_argument("--raw", help="append every measurement to this JSON-lines file")
    parser.add_argument(
        "--replay", help="make the tables from a --raw file of an earlier run instead of running"
    )
    return parser.parse_args()


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker(json.loads(sys.argv[2]), sys.argv[3])
        return
    if sys.argv[1:2] == ["--write-checkpoint"]:
        write_checkpoint(sys.argv[2], sys.argv[3])
        return
    args = parse_args()
    res = Results(args.raw, args.replay)
    started = time.time()
    load = os.getloadavg()[0]
    lines = [
        "Per-rank peak growth over construct + boost (the largest rank; median of "
        f"{args.repeat} torchrun launches; gloo, one thread per rank) as a share of the "
        "model's fp32 bytes, and construct / boost wall time of the slowest rank. Ratios of "
        "time are to the single-process exact materialization measured in the same run. See "
        "the script's docstring for each way.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = {}
        if "grid" in args.sections:
            for model in args.models:
                checkpoints[model] = f"{tmp}/{model}"
                if args.replay:
                    continue
                subprocess.run(
                    [sys.executable, __file__, "--write-checkpoint", model, checkpoints[model]],
                    check=True, capture_output=True,
                )  # fmt: skip
            lines += run_grid(res, args, checkpoints)
        if "wide" in args.sections and args.wide_ranks:
            lines += run_wide(res, args)
        if "big" in args.sections:
            lines += run_big(res, args)
        if "projection" in args.sections:
            lines += run_projection(res, args)
    run = res.run or {"load_start": load, "load_end": os.getloadavg()[0],
                      "seconds": time.time() - started}  # fmt: skip
    res.record({"kind": "run", **run})
    lines.append(
        f"Load average {run['load_start']:.1f} at the start, {run['load_end']:.1f} at the end "
        f"(on {os.cpu_count()} cores); {run['seconds']:.0f} s in all."
    )
    emit(lines, args.out)


if __name__ == "__main__":
    main()
