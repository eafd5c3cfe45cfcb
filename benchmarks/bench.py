"""Measure construction and materialization of the benchmark models, one fresh process each.

Usage (run.sh calls it; see benchmarks/README.md):

    python benchmarks/bench.py --env main --out bench-out      # eager, dormant, meta, accelerate
    .venv-peer/bin/python benchmarks/bench.py --env peer --out bench-out  # eager, colossalai

Every measurement runs in a fresh process. By default the processes are forked from a template
process that has imported the libraries and done no tensor work (``--spawn`` starts a new
interpreter instead: same figures, but ~7 s of CPU per process goes to imports). In the fresh
process: ``torch.set_num_threads(2)``, a tiny warm-up build of the same model family by the same
system, ``gc`` and ``malloc_trim``, then RSS is read, the model is built from ``manual_seed(0)``
and timed, and peak memory is ``VmHWM`` (the process's peak RSS) minus that RSS. The first
repeat of each full-size build also writes a SHA-256 digest per state-dict tensor (bytes, dtype,
shape) to ``OUT/digests/ENV-SYSTEM-MODEL.json``, after the figures are taken; report.py compares
them.

Results are appended as JSON lines to ``OUT/results.jsonl``. Nothing here asserts a time limit.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import MODELS, Model, init_pass

SEED = 0
THREADS = 2
SYSTEMS = {
    # env -> systems measured there, baseline first
    "main": ["eager", "dormant", "dormant-fast", "meta", "accelerate"],
    "peer": ["eager", "colossalai"],
}
CONSTRUCT_ONLY = {"main": ["dormant", "meta", "accelerate"], "peer": ["colossalai"]}  # no eager
TIMEOUT_S = 600


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss() -> int:
    """Peak RSS of this process since it started (``VmHWM``). Not ``ru_maxrss``: a process
    started by another inherits the parent's peak in it (Linux keeps it across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def digests(model: Any) -> dict[str, str]:
    """SHA-256 of every state-dict tensor's bytes, dtype and shape."""
    import torch

    out = {}
    for name, t in model.state_dict().items():
        h = hashlib.sha256()
        t = t.detach()
        if t.device.type == "cpu" and t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
        h.update(f"{t.dtype}/{tuple(t.shape)}/{t.device.type}".encode())
        out[name] = h.hexdigest()
    return out


def _colossalai_lazy_rate(model: Any) -> float:
    """Share of parameter and buffer elements still lazy, as colossalai's verbose report counts."""
    total = early = 0
    for t in [*model.parameters(), *model.buffers()]:
        total += t.numel()
        if getattr(t, "_materialized_data", False) is not None:
            early += t.numel()
    return 1.0 - early / total if total else 1.0


def _build(system: str, spec: Model, tiny: bool, construct_only: bool) -> dict[str, Any]:
    """Build one model with one system; return timings, memory marks and the model."""
    import torch

    build = spec.tiny if tiny else spec.build
    r: dict[str, Any] = {}
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    if system == "eager":
        model = build()
        r["construct_s"] = time.perf_counter() - t0
    elif system in ("dormant", "dormant-fast"):
        from dormant import LazyInitContext, materialize

        kwargs = {"rng": "fast"} if system == "dormant-fast" else {}
        with LazyInitContext(**kwargs):
            model = build()
        t1 = time.perf_counter()
        r["construct_s"] = t1 - t0
        r["construct_peak"] = _maxrss()
        r["after_construct_rss"] = _rss()
        if not construct_only:
            report = materialize(model, progress=False, report=True)
            t2 = time.perf_counter()
            r["materialize_s"] = t2 - t1
            r["total_s"] = t2 - t0
            r["lazy_rate"] = report.lazy_rate
            r["early"] = [f"{e.name} ({e.op})" for e in report.early]
    elif system == "meta":
        with torch.device("meta"):
            model = build()
        t1 = time.perf_counter()
        r["construct_s"] = t1 - t0
        r["construct_peak"] = _maxrss()
        r["after_construct_rss"] = _rss()
        if not construct_only:
            model.to_empty(device="cpu")
            init_pass(model, spec.family)
            t2 = time.perf_counter()
            r["materialize_s"] = t2 - t1
            r["total_s"] = t2 - t0
    elif system == "accelerate":
        from accelerate import init_empty_weights

        with init_empty_weights():
            model = build()
        r["construct_s"] = time.perf_counter() - t0
    elif system == "colossalai":
        from colossalai.lazy import LazyInitContext as ColossalLazyInitContext

        with ColossalLazyInitContext():
            model = build()
        t1 = time.perf_counter()
        r["construct_s"] = t1 - t0
        r["construct_peak"] = _maxrss()
        r["after_construct_rss"] = _rss()
        if not construct_only:
            r["lazy_rate"] = _colossalai_lazy_rate(model)  # outside the timed intervals
            t1b = time.perf_counter()
            ColossalLazyInitContext.materialize(model)
            t2 = time.perf_counter()
            r["materialize_s"] = t2 - t1b
            r["total_s"] = r["construct_s"] + r["materialize_s"]
    else:
        raise ValueError(f"unknown system {system!r}")
    r["model"] = model
    return r


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """One measurement, in the current (fresh) process."""
    import torch

    torch.set_num_threads(THREADS)
    spec = MODELS[job["model"]]
    system = job["system"]
    construct_only = not spec.full or system == "accelerate"
    warm = _build(system, spec, tiny=True, construct_only=construct_only)
    del warm
    _trim()
    before = _rss()
    r = _build(system, spec, tiny=False, construct_only=construct_only)
    peak = _maxrss()
    model = r.pop("model")
    out: dict[str, Any] = {**job, "rss_before": before, "peak": peak - before}
    out["construct_s"] = r["construct_s"]
    if "construct_peak" in r:
        out["construct_peak"] = r["construct_peak"] - before
    if "total_s" in r:
        out["materialize_s"] = r["materialize_s"]
        out["total_s"] = r["total_s"]
        out["materialize_peak"] = peak - r["after_construct_rss"]
    else:
        out["total_s"] = r["construct_s"]
        out["construct_peak"] = peak - before
    for key in ("lazy_rate", "early"):
        if key in r:
            out[key] = r[key]
    out["parameters"] = sum(p.numel() for p in model.parameters())
    out["param_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    if job.get("digest_path") and not construct_only:
        with open(job["digest_path"], "w") as f:
            json.dump(digests(model), f)
    return out


def _run_forked(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the fresh process
        code = 0
        try:
            res = measure(job)
        except BaseException as e:
            res = {**job, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            code = 1
        with open(path, "w") as f:
            json.dump(res, f)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    deadline = time.monotonic() + timeout
    status = 0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.unlink(path)
            return {**job, "error": f"killed after {timeout:.0f} s"}
        time.sleep(0.02)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {**job, "error": f"process died ({_describe(status)})"}
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _run_spawned(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/result.json"
        cmd = [sys.executable, __file__, "--worker", json.dumps(job), path]
        try:
            proc = subprocess.run(cmd, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {**job, "error": f"killed after {timeout:.0f} s"}
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {**job, "error": f"process died (exit status {proc.returncode})"}


def _worker_main(job_json: str, path: str) -> None:
    job = json.loads(job_json)
    try:
        res = measure(job)
    except BaseException as e:
        res = {**job, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    with open(path, "w") as f:
        json.dump(res, f)


def _preload(env: str) -> None:
    """Import everything the workers use, and run nothing (no tensor work, so fork is safe)."""
    import diffusers  # noqa: F401
    import torch  # noqa: F401
    import transformers
    from diffusers import UNet2DConditionModel  # noqa: F401

    for name in ("LlamaConfig", "LlamaForCausalLM", "ViTConfig", "ViTModel"):
        getattr(transformers, name)
    if env == "main":
        import accelerate  # noqa: F401

        import dormant
        import dormant._materialize  # noqa: F401
    else:
        import colossalai.lazy  # noqa: F401


def versions(env: str) -> dict[str, str]:
    import importlib.metadata as md

    names = ["torch", "transformers", "diffusers"]
    names += ["accelerate", "dormant"] if env == "main" else ["colossalai", "peft"]
    out = {"python": platform.python_version()}
    for n in names:
        with contextlib.suppress(md.PackageNotFoundError):
            out[n] = md.version(n)
    if env == "main":  # which dormant: the commit, and whether src/ had uncommitted changes
        root = Path(__file__).resolve().parent.parent
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            git = ["git", "-C", str(root)]
            head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True, check=True).stdout.strip()  # fmt: skip
            dirty = subprocess.run([*git, "status", "--porcelain", "src"], capture_output=True,
                                   text=True, check=True).stdout.strip()  # fmt: skip
            out["dormant"] += f" (commit {head}{', src/ modified' if dirty else ''})"
    return out


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        _worker_main(sys.argv[2], sys.argv[3])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", choices=sorted(SYSTEMS), required=True)
    p.add_argument("--out", default="bench-out")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    p.add_argument("--repeats", type=int, default=0, help="override every model's repeat count")
    p.add_argument("--spawn", action="store_true", help="new interpreter per measurement")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S)
    args = p.parse_args()

    out = Path(args.out)
    (out / "digests").mkdir(parents=True, exist_ok=True)
    if not args.spawn:
        t = time.perf_counter()
        _preload(args.env)
        print(f"[{args.env}] template process: imports {time.perf_counter() - t:.1f} s", flush=True)
    meta = {
        "kind": "env",
        "env": args.env,
        "versions": versions(args.env),
        "loadavg_start": os.getloadavg(),
        "start": time.time(),
        "mode": "spawn" if args.spawn else "fork",
        "argv": sys.argv,
    }
    run = _run_spawned if args.spawn else _run_forked
    results = out / "results.jsonl"
    for name in args.models.split(","):
        spec = MODELS[name]
        systems = SYSTEMS[args.env] if spec.full else CONSTRUCT_ONLY[args.env]
        repeats = args.repeats or spec.repeats
        failed: set[str] = set()
        for rep in range(repeats):  # interleaved: load from elsewhere hits every system alike
            for system in systems:
                if system in failed:
                    continue
                job: dict[str, Any] = {"env": args.env, "model": name, "system": system, "rep": rep}
                if rep == 0 and spec.full:
                    job["digest_path"] = str(out / "digests" / f"{args.env}-{system}-{name}.json")
                res = run(job, args.timeout)
                res["kind"] = "result"
                with open(results, "a") as f:
                    f.write(json.dumps(res) + "\n")
                if "error" in res:
                    failed.add(system)  # a failure is reported once, not repeated
                    print(f"[{args.env}] {name} {system}: FAILED {res['error']}", flush=True)
                else:
                    extra = f" + {res['materialize_s']:.2f} s" if "materialize_s" in res else ""
                    print(
                        f"[{args.env}] {name} {system} #{rep}: {res['construct_s']:.2f} s{extra}, "
                        f"peak {res['peak'] / 2**20:.0f} MiB",
                        flush=True,
                    )
    meta["loadavg_end"] = os.getloadavg()
    meta["end"] = time.time()
    with open(results, "a") as f:
        f.write(json.dumps(meta) + "\n")


if __name__ == "__main__":
    main()
