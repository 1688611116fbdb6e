"""SFT and CL over groups of scores, the pieces the trainable kinds share (after "Supervised Fine-Tuning or
Contrastive Learning?", arXiv 2510.14824). Every function takes ``[groups, group_size]`` tensors whose column 0 is
each group's positive; ``labels`` is 1 there and 0 elsewhere.

- ``bce(s)``: SFT per pair, ``mean_pairs BCE(sigmoid(s), labels)``;
- ``infonce(y, tau)``: CL over the group, ``mean_groups -log softmax(y / tau)[positive]``;
- ``sft_weights(s) = |sigmoid(s) - labels|`` and ``cl_weights(y, tau) = |softmax(y / tau) - labels| / tau``: each
  objective's per-example gradient magnitude on its score;
- ``surrogate(w, d) = sum_i sign_i * w_i * d_i / groups`` (sign -1 for the positive, +1 for negatives; ``w`` without
  gradient): its gradient is ``sign * w * grad d``, so a weight of one objective recombines with the direction
  (``d``) of the other (the paper's unified objective).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def positive_labels(scores: torch.Tensor) -> torch.Tensor:
    labels = torch.zeros_like(scores)
    labels[:, 0] = 1.0
    return labels


def bce(s: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(s, positive_labels(s))


def infonce(y: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.cross_entropy(y / temperature, torch.zeros(len(y), dtype=torch.long, device=y.device))


def sft_weights(s: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(s) - positive_labels(s)).abs()


def cl_weights(y: torch.Tensor, temperature: float) -> torch.Tensor:
    return (torch.softmax(y / temperature, dim=1) - positive_labels(y)).abs() / temperature


def surrogate(weights: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    return ((1.0 - 2.0 * positive_labels(direction)) * weights.detach() * direction).sum() / len(direction)
