"""Multi-task learning with hard parameter sharing: one encoder, one head per task.

The book explains it in *Terms II: learning across tasks and domains* (section
``term-multi-task-learning``).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from tlutils.methods.features import mean_pool


class MultiTaskModel(nn.Module):
    """A shared encoder and a linear head per task, on the mean-pooled token states.

    ``forward(task, batch)`` returns ``(logits, loss)`` for that task's head; the training
    loss of a step over several tasks is the sum (or a weighted sum) of their losses, and the
    shared encoder receives the sum of their gradients.

    Args:
        encoder: a Hugging Face encoder returning ``last_hidden_state`` (e.g.
            ``load_model(...).base_model``).
        num_labels: ``{task name: number of classes}``.
        dropout: dropout before each head.

    Shapes:
        batch["input_ids"], batch["attention_mask"]: (B, T); logits: (B, C_task).

    Reference: Caruana, *Multitask Learning*, Machine Learning 28, 1997; Liu et al., *Multi-Task
    Deep Neural Networks for Natural Language Understanding*, ACL 2019,
    https://arxiv.org/abs/1901.11504.
    """

    def __init__(self, encoder: nn.Module, num_labels: Mapping[str, int], dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({task: nn.Linear(hidden, n) for task, n in num_labels.items()})

    def forward(self, task: str, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = self.encoder(**inputs).last_hidden_state  # (B, T, H)
        pooled = mean_pool(hidden, batch["attention_mask"])  # (B, H)
        logits = self.heads[task](self.dropout(pooled))  # (B, C_task)
        labels = batch.get("labels")
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return logits, loss
