"""Dual-encoder losses over a batch's query x document score matrix.

Shared layout: ``q`` is ``[B, D]`` query embeddings, ``d_pos`` is ``[B, D]`` (row i is query i's
positive), ``d_neg`` is ``[B, n, D]`` hard negatives (or None). The documents of the batch are
``docs = [d_pos; d_neg.flatten()]`` (``B + B*n`` columns) and ``S = q @ docs.T`` is ``[B, B + B*n]``.
Cell ``(i, i)`` is positive; every other cell is a negative for its row: in-batch positives of
other queries, the query's own hard negatives and the other queries' hard negatives. Cells that
must not count as negatives (the same document appearing as another query's positive, or as a hard
negative) are dropped either by an ``exclude`` mask (``[B, B + B*n]`` bool) or, equivalently and
also across processes, by ``keys``: one int64 per document column (``text_keys`` of the texts, in
the column order), a cell being dropped when its document's key equals the row's positive's key.

**Cross-process negatives** (``gather=True``; a no-op unless ``torch.distributed`` is initialised with
more than one process). Each process holds ``B`` of the global ``B * world`` queries of the step. The
documents (and keys) of every process are all-gathered *with gradient*
(``gather_with_grad``: its backward sums, on each process, the gradients every process computed for
that process's rows, as ``torch.distributed.nn.functional.all_gather``), laid out as one global batch
``[all positives; all hard negatives]``, so the columns are exactly the 1-process batch of ``B * world``
queries; each process scores only its own query rows against them, its positives sitting at columns
``rank * B + i`` (targets offset by rank). Every loss returns ``world * (its rows' sum of terms) /
(the global count of terms)``, i.e. ``world`` times this process's share of the global loss: DDP
averages gradients over processes, so the averaged gradient is exactly the gradient of the global
loss (tested: 2 processes x B == 1 process x 2B). The logged value averaged over processes is the global loss.
As sentence-transformers' ``gather_across_devices``, Tevatron's ``_dist_gather_tensor`` and
FlagEmbedding's ``negatives_cross_device``.

**Distillation** (``MarginMSELoss``, ``ListwiseKLLoss``) also takes ``teacher``, ``[B, 1 + n]`` teacher scores of
each query's own group (column 0 its positive, then its ``n`` hard negatives, as ``d_neg``): these losses compare
scores within a query's group only, so no other query's document enters them, and ``gather`` only makes the mean
global (``world * this process's sum / the global count``, the same contract as above).
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch
import torch.nn.functional as F


def score_matrix(q: torch.Tensor, d_pos: torch.Tensor, d_neg: torch.Tensor | None = None) -> torch.Tensor:
    """``S = q @ [d_pos; d_neg.flatten(0, 1)].T`` of shape ``[B, B + B*n]``."""
    docs = d_pos if d_neg is None else torch.cat([d_pos, d_neg.reshape(-1, d_pos.shape[-1])], dim=0)
    return q @ docs.T


# ---------------------------------------------------------------- cross-process plumbing
def dist_info() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group; ``(0, 1)`` when not distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every process's gradient of each block and hands each process its
    own block (what ``torch.distributed.nn.functional.all_gather``, deprecated in torch 2.13, computes)."""

    @staticmethod
    def forward(ctx, t):
        import torch.distributed as dist

        rank, world = dist_info()
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t)
        ctx.rank, ctx.rows = rank, t.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            mine = torch.empty((ctx.rows, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(mine, grad)
            return mine
        grad = grad.clone()
        dist.all_reduce(grad)  # gloo has no reduce-scatter
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Rows of every process concatenated in rank order; the gradient of each process's rows flows back
    to it (summed over the processes that used them). Identity in a single process."""
    if dist_info()[1] == 1:
        return t
    return _GatherWithGrad.apply(t.contiguous())


def gather_no_grad(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    world = dist_info()[1]
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


def global_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of a (detached) count over processes."""
    import torch.distributed as dist

    value = value.detach().clone()
    if dist_info()[1] > 1:
        dist.all_reduce(value)
    return value


def text_keys(texts: Sequence[str], device=None) -> torch.Tensor:
    """int64 keys of texts (blake2b): equal texts, equal keys; used to find duplicate documents across processes."""
    return torch.tensor([int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little", signed=True)
                         for t in texts], dtype=torch.long, device=device)


def _assemble(q, d_pos, d_neg, exclude, keys, gather: bool):
    """The global document columns (gathered when ``gather`` and distributed), this process's positive
    columns, the excluded cells of its rows ``[B, C]`` (never the positive) and ``(rank, world, keys_all)``."""
    rank, world = dist_info() if gather else (0, 1)
    B, D = d_pos.shape
    neg = d_neg.reshape(-1, D) if d_neg is not None else None
    if world > 1:
        if exclude is not None:
            raise ValueError("with gathered negatives pass keys= (text_keys of the documents), not an exclude= mask")
        pos_all, neg_all = gather_with_grad(d_pos), (gather_with_grad(neg) if neg is not None else None)
        if keys is not None:
            keys = torch.cat([gather_no_grad(keys[:B])] + ([gather_no_grad(keys[B:])] if neg is not None else []))
    else:
        pos_all, neg_all = d_pos, neg
    docs = pos_all if neg_all is None else torch.cat([pos_all, neg_all], dim=0)
    cols = torch.arange(B, device=q.device) + rank * B
    excluded = exclude
    if keys is not None:
        excluded = keys[None, :] == keys[cols][:, None]
    if excluded is not None:
        excluded = excluded.clone()
        excluded[torch.arange(B, device=q.device), cols] = False
    return docs, cols, excluded, rank, world, keys


def _scaled_mean(total: torch.Tensor, count: torch.Tensor, world: int) -> torch.Tensor:
    """``world * total / global count``: this process's share of the global mean, times ``world``."""
    if world == 1:
        return total / count
    return world * total / global_sum(count.to(total.dtype))


class InfoNCELoss(torch.nn.Module):
    """InfoNCE (van den Oord et al. 2018; DPR; E5) with in-batch and hard negatives.

    ``L = mean_i -log( exp(S_ii / tau) / sum_j exp(S_ij / tau) )``, j over all batch documents.
    ``symmetric=True`` adds the document -> query direction over the positives,
    ``L_d = mean_i -log( exp(S_ii / tau) / sum_k exp(S_ki / tau) )``, and returns ``(L + L_d) / 2``.
    ``decoupled=True`` is DEXML's decoupled softmax: the positive is left out of the denominator,
    ``L = mean_i [ -S_ii / tau + log sum_{j != i} exp(S_ij / tau) ]``.
    ``gather=True``: the documents (and for ``symmetric`` the queries) of every process are negatives
    too (module doc); cost per process ``B x (B + B*n) * world`` scores.
    """

    def __init__(self, temperature: float = 0.05, symmetric: bool = False, decoupled: bool = False, gather: bool = False):
        super().__init__()
        self.temperature, self.symmetric, self.decoupled, self.gather = temperature, symmetric, decoupled, gather

    def forward(self, q, d_pos, d_neg=None, exclude: torch.Tensor | None = None, keys: torch.Tensor | None = None) -> torch.Tensor:
        docs, cols, excluded, rank, world, keys_all = _assemble(q, d_pos, d_neg, exclude, keys, self.gather)
        B = q.shape[0]
        rows = torch.arange(B, device=q.device)
        logits = q @ docs.T / self.temperature
        if excluded is not None:
            logits = logits.masked_fill(excluded, float("-inf"))
        if self.decoupled:
            positive = torch.zeros_like(logits, dtype=torch.bool)
            positive[rows, cols] = True
            terms = -logits[rows, cols] + torch.logsumexp(logits.masked_fill(positive, float("-inf")), dim=1)
        else:
            terms = F.cross_entropy(logits, cols, reduction="none")
        loss = _scaled_mean(terms.sum(), torch.tensor(float(B), device=q.device), world)
        if self.symmetric:
            q_all = gather_with_grad(q) if world > 1 else q
            by_doc = d_pos @ q_all.T / self.temperature  # [B, B * world]: local positives x all queries
            if world == 1 and excluded is not None:
                by_doc = by_doc.masked_fill(excluded[:, :B].T, float("-inf"))
            elif keys_all is not None:
                pos_keys = keys_all[:B * world]
                dup = pos_keys[None, :] == pos_keys[cols][:, None]
                dup[rows, cols] = False
                by_doc = by_doc.masked_fill(dup, float("-inf"))
            terms_d = F.cross_entropy(by_doc, cols, reduction="none")
            loss = (loss + _scaled_mean(terms_d.sum(), torch.tensor(float(B), device=q.device), world)) / 2
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
    at a time to bound memory (``chunk * B*(1+n) * B`` pair terms live at once).

    ``gather=True`` (module doc): with ``world`` processes of ``B`` queries each, the global matrix is
    ``G x G*(1+n)`` with ``G = B * world``; each process pairs its own ``B`` positives with all
    ``~G^2 (1+n)`` negative cells, i.e. ``B * G^2 * (1+n)`` pair terms per process (``G^3 (1+n)`` in all:
    the cost grows with the cube of the global batch; at G = 512, n = 1 that is 2.7e8 terms per step,
    and a chunk of 64 positives holds 64 x 524,288 terms = 134 MB of float32, plus what autograd keeps),
    plus the ``G x G(1+n)`` score matrix on every process. ``per_query`` costs ``B x G(1+n)`` per process.
    """

    def __init__(self, temperature: float = 1.0, per_query: bool = False, chunk: int = 64, gather: bool = False):
        super().__init__()
        self.temperature, self.per_query, self.chunk, self.gather = temperature, per_query, chunk, gather

    def forward(self, q, d_pos, d_neg=None, exclude: torch.Tensor | None = None, keys: torch.Tensor | None = None) -> torch.Tensor:
        docs, cols, excluded, rank, world, keys_all = _assemble(q, d_pos, d_neg, exclude, keys, self.gather)
        if world == 1:
            return mw_from_scores(q @ docs.T, self.temperature, self.per_query, excluded, self.chunk)
        B = q.shape[0]
        if self.per_query:
            scores = q @ docs.T
            positive = torch.zeros_like(scores, dtype=torch.bool)
            positive[torch.arange(B, device=q.device), cols] = True
            negative = ~positive if excluded is None else ~positive & ~excluded
            diffs = (scores[positive][:, None] - scores) / self.temperature
            terms = F.softplus(-diffs)[negative]
            return _scaled_mean(terms.sum(), torch.tensor(float(terms.numel()), device=q.device), world)
        scores = gather_with_grad(q) @ docs.T  # [G, C]: every process's rows (their negatives count for everyone)
        positive = _positive_mask(scores)
        negative = ~positive
        if keys_all is not None:
            negative &= ~(keys_all[None, :] == keys_all[:scores.shape[0]][:, None])
        neg = scores[negative]
        pos = scores[cols, cols]
        total = _pair_sum(pos, neg, self.temperature, self.chunk)
        return _scaled_mean(total, torch.tensor(float(pos.numel() * neg.numel()), device=q.device), world)


def _pair_sum(pos: torch.Tensor, neg: torch.Tensor, temperature: float, chunk: int) -> torch.Tensor:
    """``sum_{p, n} softplus(-(p - n) / tau)``, ``chunk`` positives at a time."""
    total = pos.new_zeros(())
    for start in range(0, pos.shape[0], chunk):
        total = total + F.softplus(-(pos[start:start + chunk, None] - neg[None, :]) / temperature).sum()
    return total


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
    return _pair_sum(pos, neg, temperature, chunk) / (pos.numel() * neg.numel())


# ---------------------------------------------------------------- distillation from teacher scores
def _group_scores(q: torch.Tensor, d_pos: torch.Tensor, d_neg: torch.Tensor | None, teacher: torch.Tensor | None,
                  what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Student scores ``[B, 1 + n]`` of each query's own group (positive first, as ``teacher``) and ``teacher``,
    checked to match, both in at least float32 (bf16 embeddings are scored in float32)."""
    if d_neg is None or d_neg.shape[1] == 0:
        raise ValueError(f"{what} compares the positive with hard negatives: needs d_neg with n >= 1 per query")
    if teacher is None:
        raise ValueError(f"{what} distils teacher scores: pass teacher=[B, 1 + n] (positive first, then the negatives)")
    B, n = d_neg.shape[:2]
    if tuple(teacher.shape) != (B, 1 + n):
        raise ValueError(f"{what}: teacher scores of shape {tuple(teacher.shape)}, the group is ({B}, {1 + n})")
    student = torch.cat([(q * d_pos).sum(-1, keepdim=True), torch.einsum("bd,bnd->bn", q, d_neg)], dim=1)
    dtype = torch.promote_types(student.dtype, torch.float32)
    return student.to(dtype), teacher.to(device=student.device, dtype=dtype)


class MarginMSELoss(torch.nn.Module):
    """Margin-MSE (Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with Cross-Architecture
    Knowledge Distillation"): the student's margin between a query's positive and each of its hard negatives
    regresses onto the teacher's margin,

        ``L = mean_{(i, k)} ( (s(q_i, d+_i) - s(q_i, d-_ik)) - (t(q_i, d+_i) - t(q_i, d-_ik)) )^2``

    over the ``B * n`` (query, hard negative) pairs, ``s = q . d / tau`` the encoder's own score (cosine / tau when
    it normalises; ``tau`` = ``temperature``, as InfoNCE's, so that a normalised student's margins, at most 2 / tau,
    can reach a cross-encoder's logit margins) and ``t`` the teacher's score (``teacher[i, 0]`` the positive's,
    ``teacher[i, 1 + k]`` the k-th negative's). Only margins are matched, so the teacher's scores may be on any
    offset. ``exclude`` / ``keys`` are accepted for the common call and unused: a negative equal to the positive
    has its teacher margin.
    """

    uses_teacher = True

    def __init__(self, temperature: float = 1.0, gather: bool = False):
        super().__init__()
        self.temperature, self.gather = temperature, gather

    def forward(self, q, d_pos, d_neg=None, exclude: torch.Tensor | None = None, keys: torch.Tensor | None = None,
                teacher: torch.Tensor | None = None) -> torch.Tensor:
        s, t = _group_scores(q, d_pos, d_neg, teacher, "margin-mse")
        s = s / self.temperature
        terms = ((s[:, :1] - s[:, 1:]) - (t[:, :1] - t[:, 1:])) ** 2
        world = dist_info()[1] if self.gather else 1
        return _scaled_mean(terms.sum(), torch.tensor(float(terms.numel()), device=q.device), world)


class ListwiseKLLoss(torch.nn.Module):
    """Listwise KL distillation (as in RocketQAv2's listwise distillation, there with a trained teacher): over each
    query's own group ``G_i = [d+_i, d-_i1 .. d-_in]``, the student's softmax at temperature ``tau_s`` against
    the teacher's at ``tau_t``,

        ``p_t(d | q_i) = exp(t(q_i, d) / tau_t) / sum_{d' in G_i} exp(t(q_i, d') / tau_t)``, ``p_s`` likewise of ``s / tau_s``,
        ``L = mean_i KL(p_t || p_s) = mean_i sum_{d in G_i} p_t(d | q_i) (log p_t(d | q_i) - log p_s(d | q_i))``

    ``s = q . d`` the encoder's score and ``t`` the teacher's (``teacher[i]`` in group order, the positive
    first). In-batch documents are not part of the group (they have no teacher score). ``exclude`` / ``keys``
    are accepted for the common call and unused.
    """

    uses_teacher = True

    def __init__(self, temperature: float = 0.05, teacher_temperature: float = 1.0, gather: bool = False):
        super().__init__()
        self.temperature, self.teacher_temperature, self.gather = temperature, teacher_temperature, gather

    def forward(self, q, d_pos, d_neg=None, exclude: torch.Tensor | None = None, keys: torch.Tensor | None = None,
                teacher: torch.Tensor | None = None) -> torch.Tensor:
        s, t = _group_scores(q, d_pos, d_neg, teacher, "kl")
        log_p_t = F.log_softmax(t / self.teacher_temperature, dim=1)
        log_p_s = F.log_softmax(s / self.temperature, dim=1)
        terms = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
        world = dist_info()[1] if self.gather else 1
        return _scaled_mean(terms.sum(), torch.tensor(float(terms.numel()), device=q.device), world)
