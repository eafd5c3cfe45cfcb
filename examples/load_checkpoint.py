"""Load a checkpoint into a lazily built model: each tensor is read once, at materialization,
and the random initialization it replaces is never computed.

The script first saves a checkpoint of its own (a trained model would be saved the same way).
Run: ``python examples/load_checkpoint.py``.
"""

import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from dormant import LazyInitContext, load_checkpoint, materialize

config = LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4, vocab_size=4096)
tmp = tempfile.TemporaryDirectory()  # removed at exit
checkpoint_dir = Path(tmp.name)
saved = LlamaForCausalLM(config).state_dict()
save_file(saved, checkpoint_dir / "model.safetensors")

with LazyInitContext():
    model = LlamaForCausalLM(config)
result = load_checkpoint(model, checkpoint_dir)  # safetensors (sharded too), torch.save, or DCP
print(f"loaded {len(result.loaded)} tensors lazily; missing: {result.missing}")
report = materialize(model, report=True)  # reads each tensor once
print(f"random ops run while materializing: {len(report.random_ops)}")
exact = all(torch.equal(t, saved[name]) for name, t in model.state_dict().items())
print(f"exact: {exact} (every tensor equals the saved one)")
