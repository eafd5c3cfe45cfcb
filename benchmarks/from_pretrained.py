"""Loading a pretrained Llama: transformers' own from_pretrained against dormant's lazy load.

Run: python benchmarks/from_pretrained.py [--model llama-350m] [--repeat 3] [--out FILE.md]
Saves one checkpoint (safetensors, fp32) into a temporary directory, then measures each way of
loading it in a fresh process, median of ``--repeat`` rounds (each round runs every way once, so
that a slow phase of the machine falls on all of them):

- ``transformers``: ``AutoModelForCausalLM.from_pretrained(dir)``, the baseline;
- ``dormant``: the same call inside ``LazyInitContext``, then ``materialize``;
- ``build + load_state_dict``: the way of stacks that build first and load after
  (``Model(config)`` then ``load_state_dict(safetensors.torch.load_file(...))``);

each once with the checkpoint's dtype and once with ``dtype=torch.bfloat16``. After loading,
every value is read once, a SHA-256 of the state dict, so that the pages of a memory-mapped
file count in the peak as they would in training, and the table can say whether each way gives
transformers' values. Peak: ``VmHWM`` (peak RSS) minus RSS before loading.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import _maxrss
from models import LLAMA
from tables import MIB, emit, parse_args

WAYS = ("transformers", "dormant", "build + load_state_dict")


def config(size: str) -> object:
    from transformers import LlamaConfig

    return LlamaConfig(**LLAMA[size])


def worker(way: str, path: str, dtype_name: str) -> None:
    import time

    import psutil
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

    import dormant

    torch.set_num_threads(2)
    dtype = getattr(torch, dtype_name)
    with dormant.LazyInitContext():  # warm-up: load the code every way uses
        warm = torch.nn.Linear(2, 2)
    dormant.materialize(warm)
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    if way == "transformers":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    elif way == "dormant":
        with dormant.LazyInitContext():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        dormant.materialize(model)
    else:
        model = LlamaForCausalLM(AutoConfig.from_pretrained(path))
        model.load_state_dict(load_file(f"{path}/model.safetensors"))
        model.to(dtype)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256()  # reads every value once
    for _, p in sorted(model.state_dict().items()):
        digest.update(p.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
    peak = _maxrss() - before
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"seconds": seconds, "peak": peak, "model_bytes": model_bytes,
                      "digest": digest.hexdigest()}))  # fmt: skip


def measure(way: str, path: str, dtype: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", way, path, dtype]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {k: statistics.median(r[k] for r in runs) for k in ("seconds", "peak", "model_bytes")}
    digests = {r["digest"] for r in runs}
    out["digest"] = digests.pop() if len(digests) == 1 else "differs between runs"
    return out


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker(*sys.argv[2:5])
        return
    args = parse_args(__doc__)

    import torch
    from transformers import LlamaForCausalLM

    lines = [
        f"Loading a `{args.model}` checkpoint (safetensors, fp32), median of "
        f"{args.repeat} fresh processes; every value read once after loading (a SHA-256 "
        "of the state dict, compared across ways). Ratios are to transformers' own "
        "`from_pretrained` with the same dtype.",
        "",
        "| dtype | way | time s | time vs transformers | peak MiB | peak vs transformers "
        "| model MiB | same values |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory() as path:
        torch.manual_seed(0)
        LlamaForCausalLM(config(args.model)).save_pretrained(path)
        for dtype in ("float32", "bfloat16"):
            runs: dict[str, list[dict[str, Any]]] = {w: [] for w in WAYS}
            for _ in range(args.repeat):  # round by round: the machine's drift hits every way
                for w in WAYS:
                    runs[w].append(measure(w, path, dtype))
            med = {w: _median(rs) for w, rs in runs.items()}
            base = med["transformers"]
            for way in WAYS:
                m = med[way]
                time_ratio = m["seconds"] / base["seconds"]
                lines.append(
                    f"| {dtype} | {way} | {m['seconds']:.2f} | {time_ratio:.2f}x "
                    f"| {m['peak'] / MIB:.0f} | {m['peak'] / base['peak']:.2f}x "
                    f"| {m['model_bytes'] / MIB:.0f} | "
                    f"{'yes' if m['digest'] == base['digest'] else 'no'} |"
                )
    emit(lines, args.out)


if __name__ == "__main__":
    main()
