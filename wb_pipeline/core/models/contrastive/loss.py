"""The training objective: open_clip's symmetric `ClipLoss` with a learnable temperature, plus a
text-neighbourhood distillation term that pulls each side's in-batch similarities toward the raw text encoder's."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .config import ContrastiveConfig
from .model import JointSpaceModel


def neighbourhood_distillation(
    raw_text: torch.Tensor, text_heads: torch.Tensor, image_heads: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over both sides of KL(P ‖ Q_side): P = softmax over the raw text cosines of the batch's
    other products (the teacher, no gradient), Q_side = softmax over that side's unit-norm head
    similarities, both at `temperature`, self-similarity masked out."""
    self_mask = torch.eye(len(raw_text), dtype=torch.bool, device=raw_text.device)
    unit = F.normalize(raw_text, dim=-1)
    teacher = F.log_softmax((unit @ unit.T / temperature).masked_fill(self_mask, -1e4), dim=-1).detach()
    total = raw_text.new_zeros(())
    for heads in (text_heads, image_heads):
        student = F.log_softmax((heads @ heads.T / temperature).masked_fill(self_mask, -1e4), dim=-1)
        total = total + (teacher.exp() * (teacher - student)).sum(dim=-1).mean()
    return total / 2


class _PairLoss:
    """The training objective on one batch of pairs: open_clip's symmetric `ClipLoss` on the heads,
    plus `neighbourhood_weight` × `neighbourhood_distillation` (the same in training and validation)."""

    def __init__(self, config: ContrastiveConfig):
        from open_clip.loss import (
            ClipLoss,  # imported here: open_clip's package import costs seconds
        )

        self.clip = ClipLoss()
        self.weight, self.temperature = config.neighbourhood_weight, config.neighbourhood_temperature

    def __call__(self, model: JointSpaceModel, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        text_heads, image_heads = model.head_text(text), model.head_image(image)
        loss = self.clip(image_heads, text_heads, model.logit_scale())
        if self.weight > 0:
            loss = loss + self.weight * neighbourhood_distillation(text, text_heads, image_heads, self.temperature)
        return loss
