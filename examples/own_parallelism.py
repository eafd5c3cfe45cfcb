# torchrun --nproc_per_node=2 examples/own_parallelism.py
"""Bring your own parallelism: your sharding code, unchanged, on a lazily built model.

The model is built inside ``LazyInitContext``; your own torchtitan-style ``parallelize`` splits
each block with tensor parallelism and shards it with FSDP2; ``dormant.materialize`` replaces
``to_empty`` + ``init_weights``. Each rank computes only its local shards, and the full values
equal an eager single-process build from the same seed, which the script checks.
"""

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Replicate
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from transformers import LlamaConfig, LlamaForCausalLM

import dormant
from dormant import LazyInitContext


def parallelize(model, mesh):  # your own, torchtitan-style: TP, then FSDP2 per block
    head = {  # the embeddings and the head sharded too, not whole on every rank
        "model.embed_tokens": RowwiseParallel(input_layouts=Replicate()),
        "lm_head": ColwiseParallel(output_layouts=Replicate()),
    }
    parallelize_module(model, mesh["tp"], head)
    plan = {
        "self_attn.q_proj": ColwiseParallel(),
        "self_attn.k_proj": ColwiseParallel(),
        "self_attn.v_proj": ColwiseParallel(),
        "self_attn.o_proj": RowwiseParallel(),
        "mlp.gate_proj": ColwiseParallel(),
        "mlp.up_proj": ColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(),
    }
    for block in model.model.layers:
        parallelize_module(block, mesh["tp"], plan)
        fully_shard(block, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])


dormant.launch(seed=0)  # the same seed on every rank
world = dist.get_world_size()
tp = 2 if world % 2 == 0 else 1
mesh = init_device_mesh("cpu", (world // tp, tp), mesh_dim_names=("dp", "tp"))
config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, vocab_size=256)  # fmt: skip
with LazyInitContext():
    model = LlamaForCausalLM(config)  # was: with torch.device("meta")
dormant.check_same_program(model)  # optional: every rank built the same model
parallelize(model, mesh)
dormant.materialize(model)  # was: model.to_empty(device=...); model.init_weights()

torch.manual_seed(0)
eager = LlamaForCausalLM(config).state_dict()  # what one process builds, for the check
full = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}
same = sum(torch.equal(full[k], eager[k]) for k in eager)
print(f"rank {dist.get_rank()}: {same} of {len(eager)} tensors equal an eager build (tp={tp})")
dist.destroy_process_group()
