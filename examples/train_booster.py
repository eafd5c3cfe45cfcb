# torchrun --nproc_per_node=2 examples/train_booster.py
"""Train a lazily built model with a Booster: FSDP2 shards it while it is still lazy, so each
rank allocates and computes only its own shards of the parameters.

On CPU the ranks talk through gloo; where CUDA is available, ``dormant.launch`` picks nccl and
one GPU per rank (CI runs the CPU path only). Plain ``python`` runs it as one process. The data
is a toy task (continue a counting sequence) that a few steps visibly learn.
"""

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset
from transformers import LlamaConfig, LlamaForCausalLM

import dormant
from dormant import LazyInitContext
from dormant.booster import Booster
from dormant.booster.plugin import TorchFSDPPlugin

dormant.launch(seed=0)  # torchrun's environment, or one process; same seed on every rank
device = "cuda" if torch.cuda.is_available() else "cpu"
booster = Booster(plugin=TorchFSDPPlugin(), mixed_precision=None)
config = LlamaConfig(
    hidden_size=128,
    intermediate_size=344,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    vocab_size=256,
)
with LazyInitContext():
    model = LlamaForCausalLM(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
criterion = torch.nn.CrossEntropyLoss()
starts = torch.arange(64).unsqueeze(1)
dataset = TensorDataset((starts + torch.arange(33)) % config.vocab_size)  # 64 sequences
dataloader = DataLoader(dataset, batch_size=8, shuffle=True)
lr_scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.1, total_iters=12)
model, optimizer, criterion, dataloader, lr_scheduler = booster.boost(
    model, optimizer, criterion, dataloader, lr_scheduler
)

losses = []
for epoch in range(3):
    dataloader.sampler.set_epoch(epoch)  # each rank reads its own part of the data
    for (tokens,) in dataloader:
        tokens = tokens.to(device)
        logits = model(tokens[:, :-1]).logits
        loss = criterion(logits.flatten(0, 1), tokens[:, 1:].flatten())
        booster.backward(loss, optimizer)
        optimizer.step()
        optimizer.zero_grad()
        lr_scheduler.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean, op=dist.ReduceOp.AVG)  # the loss over all ranks' batches
        losses.append(mean.item())
if dist.get_rank() == 0:
    world = dist.get_world_size()
    print(f"{len(losses)} steps on {world} rank(s): loss {losses[0]:.3f} -> {losses[-1]:.3f}")
dist.destroy_process_group()
