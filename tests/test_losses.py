"""Each training loss equals a hand computation on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from milco_os.training.losses import (
    echo_in_token_space,
    flops_regulariser,
    group_scores,
    info_nce_loss,
    kl_group_loss,
    l1_regulariser,
    regulariser,
    score_matrix,
    smse,
)


def test_smse_counts_entries_where_either_side_is_positive() -> None:
    student = torch.tensor([[0.5, -1.0, 0.0], [-2.0, 3.0, -0.5]])
    teacher = torch.tensor([[-1.0, -2.0, 2.0], [-1.0, 1.0, 0.0]])
    # active: (0,0) s>0, (0,2) t>0, (1,1) both; (0,1), (1,0), (1,2) are inactive
    expected = ((0.5 + 1.0) ** 2 + (0.0 - 2.0) ** 2 + (3.0 - 1.0) ** 2) / 3
    assert smse(student, teacher).item() == pytest.approx(expected)


def test_smse_of_an_inactive_batch_is_zero_and_differentiable() -> None:
    student = torch.full((2, 3), -1.0, requires_grad=True)
    loss = smse(student, torch.zeros(2, 3))
    loss.backward()
    assert loss.item() == 0.0
    assert student.grad is not None and torch.equal(student.grad, torch.zeros(2, 3))


def test_smse_rejects_different_shapes() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        smse(torch.zeros(2, 3), torch.zeros(2, 4))


def test_kl_group_loss_is_teacher_weighted_log_ratio_averaged_over_queries() -> None:
    student = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    teacher = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        s_norm = math.log(sum(math.exp(x) for x in s_row))
        t_norm = sum(math.exp(x) for x in t_row)
        for s, t in zip(s_row, t_row, strict=True):
            p = math.exp(t) / t_norm
            expected += p * (math.log(p) - (s - s_norm))
    expected /= 2
    assert kl_group_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    assert kl_group_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_info_nce_targets_each_querys_own_positive_among_all_documents() -> None:
    scores = torch.tensor([[5.0, 1.0, 2.0, 0.0], [1.0, 3.0, 4.0, 0.5]])  # B=2, G=2
    # query 0 -> doc 0, query 1 -> doc 2
    expected = (-(5.0 - math.log(sum(math.exp(x) for x in scores[0].tolist())))
                - (4.0 - math.log(sum(math.exp(x) for x in scores[1].tolist())))) / 2
    assert info_nce_loss(scores, group_size=2).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="groups of 3"):
        info_nce_loss(scores, group_size=3)


def test_l1_and_flops_regularisers() -> None:
    w = torch.tensor([[1.0, 0.0, 2.0], [3.0, 1.0, 0.0]])
    assert l1_regulariser(w).item() == pytest.approx((3.0 + 4.0) / 2)
    assert flops_regulariser(w).item() == pytest.approx(2.0**2 + 0.5**2 + 1.0**2)
    assert regulariser("flops") is flops_regulariser
    with pytest.raises(ValueError, match="unknown sparse regulariser"):
        regulariser("l2")


def test_echo_score_sums_products_of_positions_with_the_same_token() -> None:
    q_ids = torch.tensor([[7, 9, 7, 0]])
    q_w = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    d_ids = torch.tensor([[7, 7, 5], [9, 4, 0]])
    d_w = torch.tensor([[0.5, 0.25, 1.0], [2.0, 1.0, 0.0]])
    q_pivot = torch.tensor([[1.0, 0.0]])
    d_pivot = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    scores = score_matrix(q_pivot, d_pivot, q_w, q_ids, d_w, d_ids)
    brute = torch.zeros(1, 2)
    for d in range(2):
        brute[0, d] = q_pivot[0] @ d_pivot[d]
        for i in range(4):
            for j in range(3):
                if q_ids[0, i] == d_ids[d, j]:
                    brute[0, d] += q_w[0, i] * d_w[d, j]
    # doc 0: token 7 -> (1 + 3) * (0.5 + 0.25) = 3; doc 1: token 9 -> 2 * 2 = 4
    assert torch.allclose(brute, torch.tensor([[2.0 + 3.0, 0.0 + 4.0]]))
    assert torch.allclose(scores, brute)


def test_echo_token_space_sums_duplicates_and_passes_gradients() -> None:
    q_w = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    d_w = torch.tensor([[4.0]], requires_grad=True)
    q_space, d_space = echo_in_token_space(q_w, torch.tensor([[3, 3, 8]]), d_w,
                                           torch.tensor([[3]]))
    assert q_space.tolist() == [[3.0, 3.0]] and d_space.tolist() == [[4.0, 0.0]]
    (q_space @ d_space.T).sum().backward()
    assert q_w.grad.tolist() == [[4.0, 4.0, 0.0]] and d_w.grad.tolist() == [[3.0]]


def test_group_scores_pick_each_querys_own_group() -> None:
    all_scores = torch.arange(12.0).view(2, 6)  # B=2, G=3
    assert group_scores(all_scores, 3).tolist() == [[0.0, 1.0, 2.0], [9.0, 10.0, 11.0]]


def test_score_matrix_needs_ids_for_the_echo_view() -> None:
    with pytest.raises(ValueError, match="echo view"):
        score_matrix(torch.ones(1, 2), torch.ones(1, 2), q_echo=torch.ones(1, 1))
