"""Per-rank peak memory of boosting a Llama with FSDP2, 2 and 4 ranks.

Run: python benchmarks/sharded_boost.py [--model llama-350m] [--repeat 3] [--out FILE.md]
Four ways to get the model: built eagerly, built lazily, loaded with transformers'
``from_pretrained`` from a safetensors checkpoint (written once into a temporary directory),
and the same ``from_pretrained`` inside ``LazyInitContext``; then ``Booster(TorchFSDPPlugin())
.boost(model)``. Each measurement is a fresh torchrun launch; every rank reports its peak
resident memory (ru_maxrss) minus its resident memory after imports and a warm-up, and the
medians are printed as a markdown table with ratios to the eager-built run at the same world
size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import LLAMA, LLAMA_TINY
from tables import MIB, emit, parse_args


def llama_config(size: str) -> dict[str, int]:
    return LLAMA_TINY if size == "tiny" else LLAMA[size]


MODES = ("eager", "lazy", "from_pretrained", "from_pretrained, lazy")


def worker(mode: str, size: str, out: str, checkpoint: str) -> None:
    import resource

    import psutil
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    import dormant
    from dormant.booster import Booster
    from dormant.booster.plugin import TorchFSDPPlugin

    torch.set_num_threads(1)
    dormant.launch(seed=0)
    with dormant.LazyInitContext():  # warm-up: load the code both modes use
        warm = torch.nn.Linear(2, 2)
    dormant.materialize(warm)
    config = LlamaConfig(**llama_config(size))
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    if mode == "lazy":
        with dormant.LazyInitContext():
            model = LlamaForCausalLM(config)
    elif mode == "eager":
        model = LlamaForCausalLM(config)
    elif mode == "from_pretrained":
        model = AutoModelForCausalLM.from_pretrained(checkpoint)
    else:
        with dormant.LazyInitContext():
            model = AutoModelForCausalLM.from_pretrained(checkpoint)
    model, *_ = Booster(plugin=TorchFSDPPlugin()).boost(model)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    # DTensor parameters report their global size: count the model once.
    total = sum(p.numel() for p in model.parameters())
    with open(f"{out}/rank{dist.get_rank()}.json", "w") as f:
        json.dump({"peak": peak, "seconds": seconds, "model_bytes": total * 4}, f)
    dist.barrier()
    dist.destroy_process_group()


# Figures under the allocator users have (glibc's defaults), and beside them with a fixed mmap
# threshold, which keeps freed large blocks from staying in the heap (a tuning users rarely set).
ALLOCATORS = {"default": {}, "MALLOC_MMAP_THRESHOLD_=65536": {"MALLOC_MMAP_THRESHOLD_": "65536"}}


def measure(
    mode: str, size: str, nproc: int, checkpoint: str, allocator: str = "default"
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        env.update(OMP_NUM_THREADS="1", **ALLOCATORS[allocator])
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--standalone", __file__, "--worker", mode, size, out, checkpoint]  # fmt: skip
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        ranks = []
        for r in range(nproc):
            with open(f"{out}/rank{r}.json") as f:
                ranks.append(json.load(f))
    return {
        "peak": max(r["peak"] for r in ranks),
        "seconds": max(r["seconds"] for r in ranks),
        "model_bytes": ranks[0]["model_bytes"],
    }


def _rows(nproc: int, allocator: str, args: argparse.Namespace, checkpoint: str) -> list[str]:
    repeat, size = args.repeat, args.model
    runs = {
        m: [measure(m, size, nproc, checkpoint, allocator) for _ in range(repeat)] for m in MODES
    }
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
    # What boosting costs whatever the model: process group, FSDP state, allocator.
    tiny = statistics.median(
        measure("lazy", "tiny", nproc, checkpoint, allocator)["peak"] for _ in range(repeat)
    )
    rows = [f"| {nproc} | {allocator} | lazy, a tiny Llama (fixed cost) | {tiny / MIB:.0f} | | | |"]
    for mode in MODES:
        m = med[mode]
        rows.append(
            f"| {nproc} | {allocator} | {mode} | {m['peak'] / MIB:.0f} "
            f"| {m['peak'] / med['eager']['peak']:.2f}x "
            f"| {m['model_bytes'] / nproc / MIB:.0f} | {m['seconds']:.2f} |"
        )
    return rows


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker(*sys.argv[2:6])
        return
    args = parse_args(__doc__)
    lines = [
        f"FSDP2 boost (`TorchFSDPPlugin`) of `{args.model}` (benchmarks/models.py, fp32), "
        f"per-rank peak RSS during build and boost, median of {args.repeat} torchrun "
        "launches; the largest rank. Allocator `default`: glibc as users have it; beside it, "
        "with a fixed mmap threshold (a tuning variable).",
        "",
        "| ranks | allocator | model from | per-rank peak MiB | vs eager-built | model / ranks MiB "
        "| s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory() as checkpoint:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(**llama_config(args.model))
        LlamaForCausalLM(config).save_pretrained(checkpoint)
        for nproc in (2, 4):
            for allocator in ALLOCATORS:
                lines += _rows(nproc, allocator, args, checkpoint)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
