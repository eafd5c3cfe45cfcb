"""Pipeline stages of a lazy decoder model, run with ``torch.distributed.pipelining``.

A rank keeps only its stage's decoder layers (the embeddings on the first stage, the final
norm and head on the last) and deletes the rest while everything is still lazy, so
materialization computes the stage's own layers alone, with the values of an eager build of the
whole model. The stage runs the model's own submodules in their order, as the model's forward
would; ``torch.distributed.pipelining``'s GPipe schedule moves activations between stages.
A stage may then be split by tensor parallelism: its activations stay plain tensors as long as
the plan's layers end replicated (``RowwiseParallel``'s default), so the schedule sends them
unchanged between the stages' ranks of the same tensor-parallel position.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ...errors import DormantError


def split_stage(model: nn.Module, stage: int, stages: int) -> None:
    """Keep ``stage``'s share of ``model``'s decoder layers, in place, and make the model's
    forward run that share (``input_ids`` on the first stage, hidden states after it; logits
    out of the last)."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    needed = ("embed_tokens", "norm", "rotary_emb")
    if not isinstance(layers, nn.ModuleList) or not all(hasattr(base, n) for n in needed):
        raise DormantError(
            f"pp_size > 1 splits decoder models laid out as transformers' Llama family "
            f"(model.model.layers, embed_tokens, norm, rotary_emb, model.lm_head); "
            f"{type(model).__name__} is not: split it yourself (keep the stage's layers, delete "
            "the others) and call dormant.materialize(model)"
        )
    assert base is not None
    head = getattr(model, "lm_head", None)
    if head is not None and head.weight is base.embed_tokens.weight:
        raise DormantError(
            f"{type(model).__name__} ties its embeddings to its head, which live on the first "
            "and the last pipeline stage: build it with tie_word_embeddings=False for pp_size > 1"
        )
    if len(layers) < stages:
        raise DormantError(f"pp_size={stages} is more than the model's {len(layers)} layers")
    per, extra = divmod(len(layers), stages)
    start = stage * per + min(stage, extra)
    stop = start + per + (stage < extra)
    first, last = stage == 0, stage == stages - 1
    # keyed by their index in the whole model, so parameter names stay those of the whole model
    base.layers = nn.ModuleDict({str(i): layers[i] for i in range(start, stop)})
    if not first:
        base.embed_tokens = None
    if not last:
        base.norm = None
        model.lm_head = None  # type: ignore[assignment]
    model.forward = types.MethodType(_stage_forward(first, last), model)  # type: ignore[method-assign]


def _stage_forward(first: bool, last: bool) -> Callable[..., torch.Tensor]:
    from transformers.masking_utils import create_causal_mask

    def forward(model: Any, x: torch.Tensor) -> torch.Tensor:
        base: Any = model.model
        hidden = base.embed_tokens(x) if first else x
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        mask = create_causal_mask(
            config=base.config,
            inputs_embeds=hidden,
            attention_mask=None,
            cache=None,
            position_ids=positions,
        )
        rotary = base.rotary_emb(hidden, position_ids=positions)
        for layer in base.layers.values():
            hidden = layer(
                hidden, attention_mask=mask, position_embeddings=rotary, position_ids=positions
            )
        return model.lm_head(base.norm(hidden)) if last else hidden

    return forward


class PipelineRunner:
    """One GPipe schedule over this rank's stage: :meth:`run` is ``execute_pipeline``."""

    def __init__(
        self, model: nn.Module, stage: int, stages: int, group: Any, microbatches: int
    ) -> None:
        from torch.distributed.pipelining import PipelineStage

        device = next(model.parameters()).device
        self.stage, self.stages, self.model = stage, stages, model
        self.microbatches = microbatches
        self.pipe = PipelineStage(model, stage, stages, device, group=group)
        self.schedule: Any = None
        self.criterion: Any = None

    def run(
        self,
        data_iter: Iterator[Any],
        criterion: Callable[[Any, Any], torch.Tensor],
        optimizer: Any,
        return_loss: bool,
        return_outputs: bool,
    ) -> dict[str, Any]:
        from torch.distributed.pipelining import ScheduleGPipe

        batch = next(data_iter)
        ids, labels = (
            (batch["input_ids"], batch.get("labels")) if isinstance(batch, dict) else batch
        )
        scaler = getattr(optimizer, "scaler", None)
        if self.schedule is None or criterion is not self.criterion:
            model: Any = self.model

            def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                # criterion(outputs, inputs) as in the API dormant follows: outputs carry the
                # logits and the model's own loss, inputs the labels
                loss = model.loss_function(logits, target, model.config.vocab_size)
                outputs = types.SimpleNamespace(logits=logits, loss=loss)
                value = criterion(outputs, {"labels": target})
                return scaler.scale(value) if scaler is not None else value

            self.schedule = ScheduleGPipe(self.pipe, self.microbatches, loss_fn=loss_fn)
            self.criterion = criterion
        first, last = self.stage == 0, self.stage == self.stages - 1
        losses: list[torch.Tensor] = []
        target = labels if labels is not None else ids
        if first and last:
            out = self.schedule.step(ids, target=target, losses=losses)
        elif first:
            out = self.schedule.step(ids)
        elif last:
            out = self.schedule.step(target=target, losses=losses)
        else:
            out = self.schedule.step()
        loss = None
        if last and return_loss:
            loss = torch.stack([x.detach() for x in losses]).mean()
            if scaler is not None:
                loss = loss / scaler.get_scale()
        return {"loss": loss, "outputs": out if (last and return_outputs) else None}
