"""Lazy construction gives the values eager construction gives, bit for bit.

The same seeded code is built twice, eagerly and lazily; the lazy model is materialized out of
order (its last layer first) and every tensor is compared with ``torch.equal``. The random
generator also ends where eager construction leaves it, so seeded training that follows is the
same either way. Run: ``python examples/exact_values.py``.
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dormant import LazyInitContext, materialize

config = LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4, vocab_size=4096)
torch.manual_seed(0)
eager = LlamaForCausalLM(config)
eager_rng = torch.get_rng_state()

torch.manual_seed(0)
with LazyInitContext():
    lazy = LlamaForCausalLM(config)
print("generator where eager leaves it:", torch.equal(torch.get_rng_state(), eager_rng))

materialize(lazy.model.layers[-1])  # any part, in any order: the values do not change
materialize(lazy)
lazy_state = lazy.state_dict()
exact = all(torch.equal(t, lazy_state[name]) for name, t in eager.state_dict().items())
print(f"exact: {exact} ({len(lazy_state)} tensors compared with torch.equal)")
