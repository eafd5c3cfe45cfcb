"""Shard-only work when the user shards: per-rank CPU seconds of ``materialize`` after the user's
own ``fully_shard``, against single-process ``materialize``.

Run: python benchmarks/user_sharded.py [--model llama-220m] [--ranks 2] [--repeat 1]

Each measurement is a fresh process with one thread (``torch.set_num_threads(1)``); the sharded
ones run under torchrun on gloo. CPU seconds are user + system time (``resource.getrusage``) of
the materializing call alone, so ranks that share cores with each other or with other work are
still measured by their own work. Ways:

- ``materialize``: one process, lazy build, ``dormant.materialize(model)`` (the baseline);
- ``fully_shard``: each rank: lazy build, ``fully_shard`` per decoder layer and the root (as
  torchtitan does), then ``dormant.materialize(model)``;
- ``parallelize``: tensor parallelism over all ranks with torchtitan's whole plan
  (``parallelize_module``: the embeddings row-wise, every block's projections column- and
  row-wise, the head column-wise; only the norms' weights stay whole), then
  ``dormant.materialize(model)``;
- ``boost``: ``Booster(TorchFSDPPlugin()).boost(model)`` on the lazy build (the CPU seconds of
  the whole boost call).

The figure of a sharded way is its slowest rank's CPU seconds over the baseline's. Memory: the
largest rank's peak anonymous memory growth over build, sharding and materialization (sampled
every millisecond) as a share of the model's bytes, beside the target model / N + 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import LLAMA, LLAMA_TINY
from sharded_boost import Sampler

WAYS = ("fully_shard", "parallelize", "boost")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(way: str, model_name: str, out: str) -> None:
    """One measured process (a rank, or the single process): writes one JSON line."""
    import torch
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    import dormant

    torch.set_num_threads(1)
    sharded = way != "materialize"
    if sharded:
        dormant.launch(seed=0)
    with dormant.LazyInitContext():  # warm-up: load the code every way uses
        warm = LlamaForCausalLM(LlamaConfig(**LLAMA_TINY))
    dormant.materialize(warm)
    del warm
    config = LlamaConfig(**LLAMA[model_name])
    sampler = Sampler()
    before = sampler.read()
    with sampler:
        torch.manual_seed(0)
        with dormant.LazyInitContext():
            model = LlamaForCausalLM(config)
        if way == "boost":
            from dormant.booster import Booster
            from dormant.booster.plugin import TorchFSDPPlugin

            start = cpu_seconds()
            model, *_ = Booster(plugin=TorchFSDPPlugin()).boost(model)
        else:
            if way in ("fully_shard", "parallelize"):
                shard(model, way)
            start = cpu_seconds()
            dormant.materialize(model)
        seconds = cpu_seconds() - start
    # (a DTensor's numel is its full tensor's: the model's size, not this rank's shards)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    line = {
        "way": way,
        "rank": dist.get_rank() if sharded else 0,
        "world": dist.get_world_size() if sharded else 1,
        "cpu_seconds": seconds,
        "peak_growth": sampler.peak - before,
        "model_bytes": nbytes,
    }
    with open(out, "a") as f:
        f.write(json.dumps(line) + "\n")
    if sharded:
        dist.barrier()
        dist.destroy_process_group()


def shard(model: Any, way: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    if way == "fully_shard":
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return
    # torchtitan's plan (without sequence parallelism, which transformers' Llama cannot run: it
    # computes positions from the local sequence length): every matrix sharded
    col, row = ColwiseParallel, RowwiseParallel
    whole = {
        "model.embed_tokens": row(input_layouts=Replicate()),
        "lm_head": col(output_layouts=Replicate()),
    }
    block = {
        "self_attn.q_proj": col(), "self_attn.k_proj": col(), "self_attn.v_proj": col(),
        "self_attn.o_proj": row(), "mlp.gate_proj": col(), "mlp.up_proj": col(),
        "mlp.down_proj": row(),
    }  # fmt: skip
    parallelize_module(model, mesh, whole)
    for layer in model.model.layers:
        parallelize_module(layer, mesh, block)


def launch(way: str, model: str, ranks: int, out: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    here = str(Path(__file__).resolve())
    if way == "materialize":
        cmd = [sys.executable, here, "--worker", way, "--model", model, "--out", out]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(ranks), here, "--worker", way, "--model", model, "--out", out,
        ]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-220m", choices=sorted(LLAMA))
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.model, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "lines.jsonl")
        for _ in range(args.repeat):  # interleaved, so that load from elsewhere hits all alike
            for way in ("materialize", *WAYS):
                launch(way, args.model, args.ranks, out)
        lines = [json.loads(line) for line in Path(out).read_text().splitlines()]
    base = min(x["cpu_seconds"] for x in lines if x["way"] == "materialize")
    model_bytes = lines[0]["model_bytes"]
    print(f"{args.model} at {args.ranks} ranks, one thread each; single-process materialize: "
          f"{base:.2f} CPU s")  # fmt: skip
    print("| way | slowest rank CPU s | ratio | target | peak growth / model | target |")
    print("| --- | --- | --- | --- | --- | --- |")
    for way in WAYS:
        runs: dict[int, list[dict[str, Any]]] = {}
        for i, x in enumerate(y for y in lines if y["way"] == way):
            runs.setdefault(i // args.ranks, []).append(x)
        # the best launch (least disturbed by other load) by its slowest rank
        worst = [max(r, key=lambda x: x["cpu_seconds"]) for r in runs.values()]
        best = min(worst, key=lambda x: x["cpu_seconds"])
        peak = max(x["peak_growth"] for r in runs.values() for x in r) / model_bytes
        print(
            f"| {way} | {best['cpu_seconds']:.2f} | {best['cpu_seconds'] / base:.2f}x | "
            f"<= 0.55x | {peak:.2f} | <= {1 / args.ranks + 0.10:.2f} |"
        )


if __name__ == "__main__":
    main()
