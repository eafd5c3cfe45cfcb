"""Build a Llama with Llama-3-8B's shape lazily, then materialize one decoder layer of it.

Building allocates none of the 8 billion parameters (about 30 GiB in float32) and takes a fraction
of a second; materializing a layer computes exactly the values an eager build of the whole model
would give that layer, and nothing else. Run: ``python examples/large_model.py``.
"""

import resource
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dormant import LazyInitContext, is_lazy, materialize

config = LlamaConfig(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
)
torch.manual_seed(0)
start = time.perf_counter()
with LazyInitContext():
    model = LlamaForCausalLM(config)
seconds = time.perf_counter() - start
numel = sum(p.numel() for p in model.parameters())
gib = numel * 4 / 2**30
print(f"built {numel / 1e9:.1f}B parameters lazily in {seconds:.1f} s ({gib:.0f} GiB if eager)")

layer = model.model.layers[0]
start = time.perf_counter()
materialize(layer)
seconds = time.perf_counter() - start
numel = sum(p.numel() for p in layer.parameters())
print(f"materialized model.model.layers[0]: {numel / 1e6:.0f}M parameters in {seconds:.1f} s")
print(f"layer 0 lazy: {is_lazy(layer)}; layer 1 lazy: {is_lazy(model.model.layers[1])}")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
print(f"peak memory of this process: {peak:.0f} MiB")
