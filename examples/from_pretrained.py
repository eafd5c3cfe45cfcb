"""Call a library's own loader (here transformers' ``from_pretrained``) inside the context.

Its key renames, dtype conversion, tied weights and the initialization of missing keys all work
as usual, but every tensor stays lazy over the memory-mapped checkpoint until materialization,
and the values equal the same call without the context. The script saves a small model locally
first, so nothing is downloaded. Run: ``python examples/from_pretrained.py``.
"""

import tempfile

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from dormant import LazyInitContext, is_lazy, materialize

config = LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4, vocab_size=4096)
tmp = tempfile.TemporaryDirectory()  # removed at exit
local_dir = tmp.name
LlamaForCausalLM(config).save_pretrained(local_dir)

with LazyInitContext():
    model = AutoModelForCausalLM.from_pretrained(local_dir)
print(f"{type(model).__name__} loaded lazily: {is_lazy(model)}")
materialize(model)  # or booster.boost(model): each rank reads the slices it keeps

expected = AutoModelForCausalLM.from_pretrained(local_dir).state_dict()
exact = all(torch.equal(t, expected[name]) for name, t in model.state_dict().items())
print(f"exact: {exact} (every tensor equals from_pretrained without the context)")
