"""Sentiment and relatedness heads; the sparse KL target of the relatedness loss."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from treelstm.cells import ChildSumCell, NaryCell
from treelstm.data import Vocab, synthetic_sick, synthetic_sst
from treelstm.models import (
    RelatednessModel,
    SentimentModel,
    TreeLSTM,
    relatedness_loss,
    relatedness_target,
)
from treelstm.schedule import build_schedule


@pytest.mark.parametrize(
    "score, expected",
    [
        (4.5, [0, 0, 0, 0.5, 0.5]),
        (3.2, [0, 0, 0.8, 0.2, 0]),
        (1.0, [1, 0, 0, 0, 0]),
        (5.0, [0, 0, 0, 0, 1]),
        (3.0, [0, 0, 1, 0, 0]),
    ],
)
def test_relatedness_target_by_hand(score, expected):
    got = relatedness_target(torch.tensor([score], dtype=torch.float64))
    assert torch.allclose(got, torch.tensor([expected], dtype=torch.float64))


@given(st.lists(st.floats(1.0, 5.0), min_size=1, max_size=20))
@settings(max_examples=100, deadline=None)
def test_relatedness_target_is_a_sparse_distribution_with_mean_y(ys):
    """The target sums to 1, has mean y, and puts mass only on floor(y) and ceil(y)."""
    y = torch.tensor(ys, dtype=torch.float64)
    p = relatedness_target(y)
    r = torch.arange(1, 6, dtype=torch.float64)
    assert (p >= 0).all()
    assert torch.allclose(p.sum(1), torch.ones_like(y))
    assert torch.allclose(p @ r, y)
    for row, v in zip(p, ys, strict=True):
        support = {int(i) + 1 for i in torch.nonzero(row > 0)}
        assert support <= {int(v // 1), -int(-v // 1)}


def test_relatedness_target_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"\[1, 5\]"):
        relatedness_target(torch.tensor([0.5]))


def test_relatedness_loss_is_zero_at_the_target_and_positive_elsewhere():
    y = torch.tensor([1.0, 2.7, 4.5, 5.0], dtype=torch.float64)
    t = relatedness_target(y)
    exact = torch.log(t.clamp_min(1e-300))
    assert relatedness_loss(exact, y).abs() < 1e-12
    uniform = torch.full((4, 5), 0.2, dtype=torch.float64).log()
    assert relatedness_loss(uniform, y) > 0.1


def _sst_model(cell="nary", dropout=0.5, classes=5):
    torch.manual_seed(0)
    trees = synthetic_sst(6, seed=4)
    vocab = Vocab.from_trees(trees)
    if cell == "nary":
        c = NaryCell(8, 12, n_ary=2, input_at="leaves")
    else:
        c = ChildSumCell(8, 12, input_at="leaves")
    model = SentimentModel(TreeLSTM(len(vocab), c), classes, dropout)
    return model, build_schedule(trees, vocab, n_ary=2 if cell == "nary" else None)


@pytest.mark.parametrize("cell", ["nary", "childsum"])
def test_sentiment_model_scores_every_node(cell):
    model, sched = _sst_model(cell)
    out = model(sched)
    assert out.shape == (sched.num_nodes, 5)
    model.eval()
    assert torch.equal(model(sched), model(sched))  # dropout off in eval
    model.train()
    assert not torch.equal(model(sched), model(sched))  # dropout on in training


def test_sentiment_dropout_before_the_classifier_only():
    model, sched = _sst_model(dropout=0.0)
    h = model.encoder(sched).h
    assert torch.allclose(model(sched), model.classifier(h))


def _sick_model():
    torch.manual_seed(0)
    pairs = synthetic_sick(5, seed=2)
    vocab = Vocab.from_trees(t for p in pairs for t in (p.a, p.b))
    enc = TreeLSTM(len(vocab), ChildSumCell(8, 12, output_gate=False))
    model = RelatednessModel(enc, sim_hidden=7)
    a = build_schedule([p.a for p in pairs], vocab)
    b = build_schedule([p.b for p in pairs], vocab)
    return model, a, b


def test_relatedness_model_distribution_and_expected_score():
    model, a, b = _sick_model()
    logp = model(a, b)
    assert logp.shape == (5, 5)
    assert torch.allclose(logp.exp().sum(1), torch.ones(5), atol=1e-6)
    s = model.expected_score(logp)
    assert s.shape == (5,) and ((s >= 1) & (s <= 5)).all()
    assert model.hidden.out_features == 7 and model.hidden.in_features == 24


def test_relatedness_features_are_symmetric():
    model, a, b = _sick_model()
    assert torch.allclose(model(a, b), model(b, a), atol=1e-6)


def test_relatedness_gradients_reach_the_cell():
    model, a, b = _sick_model()
    loss = relatedness_loss(model(a, b), torch.tensor([1.0, 2.5, 3.0, 4.2, 5.0]))
    loss.backward()
    assert model.encoder.cell.U.weight.grad.abs().sum() > 0
