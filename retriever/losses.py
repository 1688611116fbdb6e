"""Dual-encoder losses over a batch's query x document score matrix.

Shared layout: ``q`` is ``[B, D]`` query embeddings, ``d_pos`` is ``[B, D]`` (row i is query i's
positive), ``d_neg`` is ``[B, n, D]`` hard negatives (or None). The documents of the batch are
``docs = [d_pos; d_neg.flatten()]`` (``B + B*n`` columns) and ``S = q @ docs.T`` is ``[B, B + B*n]``.
Cell ``(i, i)`` is positive; every other cell is a negative for its row: in-batch positives of
other queries, the query's own hard negatives and the other queries' hard negatives. An optional
``exclude`` mask (``[B, B + B*n]`` bool) drops cells that must not count as negatives (e.g. the
same document appearing as another query's positive).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def score_matrix(q: torch.Tensor, d_pos: torch.Tensor, d_neg: torch.Tensor | None = None) -> torch.Tensor:
    """``S = q @ [d_pos; d_neg.flatten(0, 1)].T`` of shape ``[B, B + B*n]``."""
    docs = d_pos if d_neg is None else torch.cat([d_pos, d_neg.reshape(-1, d_pos.shape[-1])], dim=0)
    return q @ docs.T


class InfoNCELoss(torch.nn.Module):
    """InfoNCE (van den Oord et al. 2018; DPR; E5) with in-batch and hard negatives.

    ``L = mean_i -log( exp(S_ii / tau) / sum_j exp(S_ij / tau) )``, j over all batch documents.
    ``symmetric=True`` adds the document -> query direction over the positives,
    ``L_d = mean_i -log( exp(S_ii / tau) / sum_k exp(S_ki / tau) )``, and returns ``(L + L_d) / 2``.
    ``decoupled=True`` is DEXML's decoupled softmax: the positive is left out of the denominator,
    ``L = mean_i [ -S_ii / tau + log sum_{j != i} exp(S_ij / tau) ]``.
    """

    def __init__(self, temperature: float = 0.05, symmetric: bool = False, decoupled: bool = False):
        super().__init__()
        self.temperature, self.symmetric, self.decoupled = temperature, symmetric, decoupled

    def forward(self, q, d_pos, d_neg=None, exclude: torch.Tensor | None = None) -> torch.Tensor:
        logits = score_matrix(q, d_pos, d_neg) / self.temperature
        B = q.shape[0]
        target = torch.arange(B, device=q.device)
        if exclude is not None:
            logits = logits.masked_fill(exclude & ~_positive_mask(logits), float("-inf"))
        if self.decoupled:
            pos = logits[target, target]
            loss = (-pos + torch.logsumexp(logits.masked_fill(_positive_mask(logits), float("-inf")), dim=1)).mean()
        else:
            loss = F.cross_entropy(logits, target)
        if self.symmetric:
            loss = (loss + F.cross_entropy(logits[:, :B].T, target)) / 2
        return loss


def _positive_mask(scores: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros_like(scores, dtype=torch.bool)
    idx = torch.arange(scores.shape[0], device=scores.device)
    mask[idx, idx] = True
    return mask


class MWLoss(torch.nn.Module):
    """MW loss: maximise the Mann–Whitney U statistic (= ROC-AUC) of the batch's scores.

    From "Optimizing What Matters: AUC-Driven Learning for Robust Neural Retrieval". Every positive
    cell ``(i, i)`` of ``S`` is paired with every negative cell ``(j, d)`` of the whole matrix,
    across queries too (global pairs: one score scale for all queries), and

        ``L = mean_{(p, n)} softplus( -(S_p - S_n) / tau )``

    i.e. binary cross-entropy that each positive outscores each negative. With ``tau = 1``,
    ``1 - AUC <= L / ln 2``. ``per_query=True`` pairs each positive only with its own row's
    negatives. Global pairs number ``B * (B*(1+n) * B - B)``: they are computed ``chunk`` positives
    at a time to bound memory.
    """

    def __init__(self, temperature: float = 1.0, per_query: bool = False, chunk: int = 64):
        super().__init__()
        self.temperature, self.per_query, self.chunk = temperature, per_query, chunk

    def forward(self, q, d_pos, d_neg=None, exclude: torch.Tensor | None = None) -> torch.Tensor:
        return mw_from_scores(score_matrix(q, d_pos, d_neg), self.temperature, self.per_query, exclude, self.chunk)


def mw_from_scores(scores: torch.Tensor, temperature: float = 1.0, per_query: bool = False,
                   exclude: torch.Tensor | None = None, chunk: int = 64) -> torch.Tensor:
    """MW loss of a score matrix whose diagonal cells ``(i, i)`` are the positives (see MWLoss)."""
    pos_mask = _positive_mask(scores)
    neg_mask = ~pos_mask if exclude is None else ~pos_mask & ~exclude
    pos = scores[pos_mask.nonzero(as_tuple=True)]  # [B] in row order
    if per_query:
        diffs = (pos[:, None] - scores) / temperature  # [B, C]
        losses = F.softplus(-diffs)[neg_mask]
        return losses.mean()
    neg = scores[neg_mask]  # [N] all negative cells
    total, count = scores.new_zeros(()), 0
    for start in range(0, pos.shape[0], chunk):
        block = F.softplus(-(pos[start:start + chunk, None] - neg[None, :]) / temperature)
        total = total + block.sum()
        count += block.numel()
    return total / count
