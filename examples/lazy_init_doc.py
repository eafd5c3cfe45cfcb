# torchrun --nproc_per_node=2 examples/lazy_init_doc.py
"""The two examples of the lazy-initialization page whose API dormant follows, with dormant's
imports: a model built from scratch, and a pretrained model loaded, each lazily, then sharded by
a Booster with ``GeminiPlugin`` (FSDP2 with CPU offload).

The page loads ``prajjwal1/bert-tiny`` from the Hugging Face Hub; this script saves a BERT of
that shape locally instead, so nothing is downloaded.
"""

import tempfile

import torch
import torch.distributed as dist
from transformers import BertConfig, BertForPreTraining, LlamaConfig, LlamaForCausalLM

import dormant
from dormant import LazyInitContext
from dormant.booster import Booster
from dormant.booster.plugin import GeminiPlugin


def save_bert_tiny(local_dir: str) -> str:
    """Rank 0 saves a BERT of bert-tiny's shape into its ``local_dir``; every rank gets the name
    of that directory."""
    name = [local_dir]
    if dist.get_rank() == 0:
        config = BertConfig(
            hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512
        )
        BertForPreTraining(config).save_pretrained(local_dir)
    dist.broadcast_object_list(name)  # also waits for rank 0 to have saved
    return name[0]


def train_step(model: torch.nn.Module, **batch: torch.Tensor) -> None:
    """One forward and backward pass of a boosted model on random tokens; says what this rank
    holds."""
    tokens = torch.randint(0, model.config.vocab_size, (2, 16), device=device)
    loss = model(input_ids=tokens, labels=tokens, **batch).loss
    booster.backward(loss)
    held = sum(p.to_local().numel() for p in model.parameters())
    line = f"{model.config.model_type}, {held} parameters here, loss {loss.item():.3f}"
    print(f"rank {dist.get_rank()}: {line}", flush=True)


dormant.launch(seed=0)
plugin = GeminiPlugin()
booster = Booster(plugin)

# 1. Initialize a model from scratch.
# Initializing on cuda is faster but takes GPU memory; by default it runs on the CPU.
device = "cuda" if torch.cuda.is_available() else "cpu"
with LazyInitContext(default_device=device):
    model = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=64, intermediate_size=172, num_hidden_layers=4, num_attention_heads=4
        )
    )
model, *_ = booster.boost(model)
train_step(model)

# 2. Initialize a model from pretrained weights.
tmp = tempfile.TemporaryDirectory()  # removed at exit
local_dir = save_bert_tiny(tmp.name)
with LazyInitContext():
    model = BertForPreTraining.from_pretrained(local_dir)
model, *_ = booster.boost(model)
train_step(model, next_sentence_label=torch.zeros(2, dtype=torch.long, device=device))
dist.destroy_process_group()
