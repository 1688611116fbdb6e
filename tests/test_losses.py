import math

import pytest
import torch

from densekit.eval.metrics import auc
from densekit.retriever.losses import InfoNCELoss, MWLoss, mw_from_scores, score_matrix

# Hand example: B = 2 queries, n = 1 hard negative each, D = 2.
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
POS = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
NEG = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]])
# docs = [pos0, pos1, neg0, neg1]; S row 0 = [1, .6, 0, 1]; row 1 = [0, .8, 1, 0]


def sp(x):
    return math.log1p(math.exp(x))


def test_score_matrix_layout():
    assert torch.allclose(score_matrix(Q, POS, NEG), torch.tensor([[1.0, 0.6, 0.0, 1.0], [0.0, 0.8, 1.0, 0.0]]))


def test_infonce_hand_computed():
    l0 = -1 + math.log(math.e + math.exp(0.6) + 1 + math.e)
    l1 = -0.8 + math.log(1 + math.exp(0.8) + math.e + 1)
    assert InfoNCELoss(temperature=1.0)(Q, POS, NEG).item() == pytest.approx((l0 + l1) / 2, abs=1e-6)
    # temperature 0.5 doubles every logit
    l0 = -2 + math.log(math.exp(2) + math.exp(1.2) + 1 + math.exp(2))
    l1 = -1.6 + math.log(1 + math.exp(1.6) + math.exp(2) + 1)
    assert InfoNCELoss(temperature=0.5)(Q, POS, NEG).item() == pytest.approx((l0 + l1) / 2, abs=1e-6)


def test_infonce_symmetric_and_decoupled_hand_computed():
    l_q = ((-1 + math.log(math.e + math.exp(0.6) + 1 + math.e)) + (-0.8 + math.log(1 + math.exp(0.8) + math.e + 1))) / 2
    # doc -> query over positives: column 0 = [1, 0], column 1 = [.6, .8]
    l_d = ((-1 + math.log(math.e + 1)) + (-0.8 + math.log(math.exp(0.6) + math.exp(0.8)))) / 2
    assert InfoNCELoss(1.0, symmetric=True)(Q, POS, NEG).item() == pytest.approx((l_q + l_d) / 2, abs=1e-6)
    dec = ((-1 + math.log(math.exp(0.6) + 1 + math.e)) + (-0.8 + math.log(1 + math.e + 1))) / 2
    assert InfoNCELoss(1.0, decoupled=True)(Q, POS, NEG).item() == pytest.approx(dec, abs=1e-6)


def test_mw_global_pairs_cross_queries_hand_computed():
    positives = [1.0, 0.8]
    negatives = [0.6, 0.0, 1.0, 0.0, 1.0, 0.0]  # every non-diagonal cell of S, both rows
    expected = sum(sp(-(p - n)) for p in positives for n in negatives) / 12
    assert MWLoss(temperature=1.0)(Q, POS, NEG).item() == pytest.approx(expected, abs=1e-6)
    expected_t = sum(sp(-(p - n) / 0.1) for p in positives for n in negatives) / 12
    assert MWLoss(temperature=0.1)(Q, POS, NEG).item() == pytest.approx(expected_t, abs=1e-5)


def test_mw_per_query_hand_computed():
    pairs = [(1.0, 0.6), (1.0, 0.0), (1.0, 1.0), (0.8, 0.0), (0.8, 1.0), (0.8, 0.0)]
    expected = sum(sp(-(p - n)) for p, n in pairs) / 6
    assert MWLoss(1.0, per_query=True)(Q, POS, NEG).item() == pytest.approx(expected, abs=1e-6)


def test_exclude_mask_removes_false_negatives():
    exclude = torch.tensor([[False, False, False, True], [False, False, False, False]])  # neg1 duplicates pos0
    negatives = [0.6, 0.0, 0.0, 1.0, 0.0]
    expected = sum(sp(-(p - n)) for p in [1.0, 0.8] for n in negatives) / 10
    assert MWLoss(1.0)(Q, POS, NEG, exclude=exclude).item() == pytest.approx(expected, abs=1e-6)
    l0 = -1 + math.log(math.e + math.exp(0.6) + 1)
    l1 = -0.8 + math.log(1 + math.exp(0.8) + math.e + 1)
    assert InfoNCELoss(1.0)(Q, POS, NEG, exclude=exclude).item() == pytest.approx((l0 + l1) / 2, abs=1e-6)


def test_mw_chunking_does_not_change_value():
    torch.manual_seed(0)
    s = torch.randn(8, 24)
    assert mw_from_scores(s, chunk=1).item() == pytest.approx(mw_from_scores(s, chunk=64).item(), rel=1e-6)


@pytest.mark.parametrize("loss", [InfoNCELoss(0.1), InfoNCELoss(0.1, symmetric=True), InfoNCELoss(0.1, decoupled=True),
                                  MWLoss(0.5), MWLoss(0.5, per_query=True)])
def test_gradients_match_finite_differences(loss):
    torch.manual_seed(1)
    q = torch.randn(3, 4, dtype=torch.double, requires_grad=True)
    p = torch.randn(3, 4, dtype=torch.double, requires_grad=True)
    n = torch.randn(3, 2, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: loss(a, b, c), (q, p, n))


def test_mw_bounds_one_minus_auc():
    """With tau = 1, softplus(-x)/ln 2 >= 1[x < 0] (and 1 >= 1/2 at ties), so 1 - AUC <= L_MW / ln 2."""
    gen = torch.Generator().manual_seed(3)
    for _ in range(50):
        s = torch.randn(6, 18, generator=gen) * 3
        labels = torch.zeros_like(s, dtype=torch.bool)
        labels[range(6), range(6)] = True
        value = auc(s.flatten().numpy(), labels.flatten().numpy())
        assert 1 - value <= mw_from_scores(s, 1.0).item() / math.log(2) + 1e-9


@pytest.mark.parametrize("loss", [InfoNCELoss(0.1), InfoNCELoss(0.1, symmetric=True), InfoNCELoss(0.1, decoupled=True),
                                  MWLoss(0.5), MWLoss(0.5, per_query=True)])
def test_text_keys_drop_the_same_cells_as_the_exclude_mask(loss):
    """keys (what crosses processes) == an exclude mask of the documents equal to the row's positive."""
    from densekit.retriever.losses import text_keys

    torch.manual_seed(2)
    positives, negatives = ["a", "b", "c"], [["b", "x"], ["y", "a"], ["c", "z"]]  # duplicates of other rows' positives
    docs = positives + [d for row in negatives for d in row]
    exclude = torch.tensor([[d == p for d in docs] for p in positives])
    q, p, n = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 2, 4)
    by_mask = loss(q, p, n, exclude=exclude & ~torch.eye(3, 9, dtype=torch.bool))
    assert loss(q, p, n, keys=text_keys(docs)).item() == pytest.approx(by_mask.item(), abs=1e-6)
    assert (exclude & ~torch.eye(3, 9, dtype=torch.bool)).sum() == 3
