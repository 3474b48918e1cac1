"""Losses of the two MILCO training stages, written against plain tensors.

Stage 1 (alignment) compares raw max-pooled vocabulary logits with :func:`smse`.
Stage 2 (contrastive) scores queries against documents with :func:`score_matrix`
(pivot dot product plus the echo view in token-id space) and trains with
:func:`kl_group_loss` or :func:`info_nce_loss` plus a sparsity regulariser on the
pivot view (:func:`l1_regulariser` or :func:`flops_regulariser`).

>>> import torch
>>> s = torch.tensor([[0.0, 2.0, -1.0]]); t = torch.tensor([[1.0, 0.0, -3.0]])
>>> float(smse(s, t))  # entries 0 and 1 only: ((0-1)^2 + (2-0)^2) / 2
2.5
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def smse(student: Tensor, teacher: Tensor) -> Tensor:
    """Sparse MSE: mean squared error over the entries where student > 0 OR teacher > 0.

    Both tensors are flattened over the whole batch; an all-inactive batch gives 0
    (still attached to the graph so every rank runs the same backward).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"smse: shapes differ, student {tuple(student.shape)} "
                         f"vs teacher {tuple(teacher.shape)}")
    active = (student > 0) | (teacher > 0)
    squared = (student - teacher).pow(2)
    return (squared * active).sum() / active.sum().clamp(min=1)


def kl_group_loss(student_scores: Tensor, teacher_scores: Tensor) -> Tensor:
    """KL(teacher || student) over each query's group of documents, averaged over queries.

    ``student_scores`` and ``teacher_scores`` are [B, G]; the raw teacher scores are
    used as logits (softmax), the student enters through its log-softmax.
    """
    if student_scores.shape != teacher_scores.shape:
        raise ValueError(f"kl_group_loss: shapes differ, student {tuple(student_scores.shape)} "
                         f"vs teacher {tuple(teacher_scores.shape)}")
    log_student = F.log_softmax(student_scores.float(), dim=-1)
    teacher = F.softmax(teacher_scores.float(), dim=-1)
    return F.kl_div(log_student, teacher, reduction="batchmean")


def info_nce_loss(scores: Tensor, group_size: int) -> Tensor:
    """InfoNCE with in-batch negatives (the paper's variant 3).

    ``scores`` is [B, B * G]: every query against every document of the batch, where
    documents come in groups of ``group_size`` per query with the positive first.
    Query i's target is document i * G; all other documents are negatives.
    """
    n_queries, n_docs = scores.shape
    if n_docs != n_queries * group_size:
        raise ValueError(f"info_nce_loss: {n_docs} documents for {n_queries} queries "
                         f"in groups of {group_size}")
    targets = torch.arange(n_queries, device=scores.device) * group_size
    return F.cross_entropy(scores.float(), targets)


def l1_regulariser(weights: Tensor) -> Tensor:
    """L1: sum over the vocabulary of |w|, mean over the batch."""
    return weights.abs().sum(dim=-1).mean()


def flops_regulariser(weights: Tensor) -> Tensor:
    """FLOPS: sum over the vocabulary of the squared batch-mean of |w|."""
    return weights.abs().mean(dim=0).pow(2).sum()


REGULARISERS: dict[str, Callable[[Tensor], Tensor]] = {
    "l1": l1_regulariser,
    "flops": flops_regulariser,
}


def regulariser(name: str) -> Callable[[Tensor], Tensor]:
    """The sparsity regulariser called ``name`` (``l1`` or ``flops``)."""
    try:
        return REGULARISERS[name]
    except KeyError:
        raise ValueError(f"unknown sparse regulariser {name!r}; "
                         f"choose one of {sorted(REGULARISERS)}") from None


def echo_in_token_space(
    q_echo: Tensor, q_ids: Tensor, d_echo: Tensor, d_ids: Tensor
) -> tuple[Tensor, Tensor]:
    """Scatter per-position echo weights into a shared token-id space (duplicates SUMMED).

    Returns [Bq, U] and [Bd, U] over the U distinct token ids of both batches, so
    that their dot product is the echo score: the sum over position pairs with the
    same token id of w_q,i * w_d,j. Differentiable (``scatter_add``); padding adds
    nothing because its echo weight is 0.
    """
    all_ids = torch.cat([q_ids.reshape(-1), d_ids.reshape(-1)])
    unique_ids, column = torch.unique(all_ids, return_inverse=True)
    q_column, d_column = column.split([q_ids.numel(), d_ids.numel()])
    q_space = q_echo.new_zeros(q_echo.shape[0], unique_ids.numel())
    d_space = d_echo.new_zeros(d_echo.shape[0], unique_ids.numel())
    q_space = q_space.scatter_add(1, q_column.view_as(q_ids), q_echo)
    d_space = d_space.scatter_add(1, d_column.view_as(d_ids), d_echo)
    return q_space, d_space


def score_matrix(
    q_pivot: Tensor,
    d_pivot: Tensor,
    q_echo: Tensor | None = None,
    q_ids: Tensor | None = None,
    d_echo: Tensor | None = None,
    d_ids: Tensor | None = None,
) -> Tensor:
    """Scores [Bq, Bd] of every query against every document: pivot dot + echo score."""
    scores = q_pivot.float() @ d_pivot.float().T
    if q_echo is None and d_echo is None:
        return scores
    if q_echo is None or d_echo is None or q_ids is None or d_ids is None:
        raise ValueError("score_matrix: the echo view needs echo weights and token ids "
                         "for both queries and documents")
    q_space, d_space = echo_in_token_space(q_echo.float(), q_ids, d_echo.float(), d_ids)
    return scores + q_space @ d_space.T


def group_scores(all_scores: Tensor, group_size: int) -> Tensor:
    """From [B, B * G] scores, each query's scores against its own group: [B, G]."""
    n_queries = all_scores.shape[0]
    grouped = all_scores.view(n_queries, n_queries, group_size)
    own = torch.arange(n_queries, device=all_scores.device)
    return grouped[own, own]
