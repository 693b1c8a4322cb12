"""The sequential baselines: packed batches against one sentence at a time (float64, values and
gradients), PackedLSTM against nn.LSTM, the paper's parameter counts, batches, and training."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from treelstm.data import Vocab, synthetic_sick, synthetic_sst
from treelstm.formats import from_parents
from treelstm.labels import IGNORE_INDEX
from treelstm.models import RelatednessModel, SentimentModel, relatedness_loss
from treelstm.sequence import (
    KINDS,
    PackedLSTM,
    SequenceBatch,
    SequenceLSTM,
    build_sequences,
    collate_sequences,
    composition_parameters,
    sentence_words,
    sequence_model,
)
from treelstm.tree import Tree

pytestmark = pytest.mark.usefixtures("float64", "one_thread")

V, E, D = 12, 5, 4  # vocabulary, word vector and memory sizes of the small models


# ------------------------------------------------------------------------- the slow reference


def _lstm_steps(xs, params, output_gate):
    """One sentence [n, E] through a stack of LSTM layers, written out step by step.
    params: per layer (W_ih, W_hh, b_ih, b_hh). Returns each layer's final (h, c)."""
    finals = []
    for w_ih, w_hh, b_ih, b_hh in params:
        H = w_hh.shape[1]
        h = xs.new_zeros(H)
        c = xs.new_zeros(H)
        outs = []
        for x in xs:
            a = w_ih @ x + b_ih + w_hh @ h + b_hh
            i, f, g = (
                torch.sigmoid(a[:H]),
                torch.sigmoid(a[H : 2 * H]),
                torch.tanh(a[2 * H : 3 * H]),
            )
            c = f * c + i * g
            h = torch.sigmoid(a[3 * H :]) * torch.tanh(c) if output_gate else torch.tanh(c)
            outs.append(h)
        finals.append((h, c))
        xs = torch.stack(outs)
    return finals


def _one_sentence(encoder: SequenceLSTM, ids: list[int]):
    """The sentence vector (and cells) of one sentence, as the reference computes it."""
    lstm = encoder.lstm
    params = [
        tuple(getattr(lstm, f"{n}_l{k}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        for k in range(encoder.num_layers)
    ]
    xs = encoder.embedding.weight[torch.tensor(ids)]
    runs = [_lstm_steps(xs, params, encoder.output_gate)]
    if encoder.bidirectional:  # the same weights over the reversed sentence
        runs.append(_lstm_steps(xs.flip(0), params, encoder.output_gate))
    h = torch.cat([h for run in runs for h, _ in run])
    c = torch.cat([c for run in runs for _, c in run])
    return h, c


sentences = st.lists(
    st.lists(st.integers(0, V - 1), min_size=1, max_size=7), min_size=1, max_size=6
)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("output_gate", [True, False], ids=["nn.LSTM", "no-output-gate"])
@given(ids=sentences, seed=st.integers(0, 2**16))
@settings(max_examples=8, deadline=None)
def test_packed_batch_equals_each_sentence_alone(kind, output_gate, ids, seed):
    """Sentence vectors, cells and every gradient (weights and word vectors) of one packed
    batch equal those of each sentence run alone through the written-out recurrence."""
    torch.manual_seed(seed)
    layers, bi = KINDS[kind]
    enc = SequenceLSTM(V, E, D, layers, bidirectional=bi, output_gate=output_gate)
    words = [[f"w{i}" for i in row] for row in ids]
    batch = build_sequences(words, {f"w{i}": i for i in range(V)})
    out = enc(batch)
    assert out.h.shape == (len(ids), enc.hidden_size) and out.root_h is out.h
    weights = torch.randn_like(out.h)
    grads = torch.autograd.grad(
        (out.h * weights).sum() + out.c.sum(), list(enc.parameters()), allow_unused=True
    )

    ref = [_one_sentence(enc, row) for row in ids]
    h_ref = torch.stack([h for h, _ in ref])
    c_ref = torch.stack([c for _, c in ref])
    torch.testing.assert_close(out.h, h_ref)
    torch.testing.assert_close(out.c, c_ref)
    ref_grads = torch.autograd.grad(
        (h_ref * weights).sum() + c_ref.sum(), list(enc.parameters()), allow_unused=True
    )
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("layers", [1, 2])
@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=5), seed=st.integers(0, 2**16))
@settings(max_examples=10, deadline=None)
def test_packed_lstm_with_an_output_gate_is_nn_lstm(layers, lengths, seed):
    """PackedLSTM(output_gate=True) with nn.LSTM's weights gives nn.LSTM's outputs, final
    states and gradients: the loop that the gateless SICK LSTM runs is nn.LSTM's recurrence."""
    torch.manual_seed(seed)
    ref = torch.nn.LSTM(E, D, layers, batch_first=True)
    ours = PackedLSTM(E, D, layers, output_gate=True)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(len(lengths), max(lengths), E)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        x, torch.tensor(lengths), batch_first=True, enforce_sorted=False
    )
    results = []
    for net in (ref, ours):
        out, (h, c) = net(packed)
        loss = (out.data * torch.arange(out.data.numel()).view_as(out.data).sin()).sum()
        loss = loss + (h * 2).sum() + (c * 3).sum()
        results.append((out.data, h, c, torch.autograd.grad(loss, list(net.parameters()))))
    for a, b in zip(results[0][:3], results[1][:3], strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(results[0][3], results[1][3], strict=True):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(
    ("task", "kind", "memory", "count"),
    [
        # 4 gates x d x (300 + d + 2): two bias vectors per gate, as in the reference
        ("sst", "lstm", 168, 315_840),
        ("sst", "bilstm", 168, 315_840),  # the directions share their weights
        ("sst", "lstm2", 108, 271_296),
        ("sst", "bilstm2", 108, 271_296),
        # no output gate: 3 gates
        ("sick", "lstm", 150, 203_400),
        ("sick", "bilstm", 150, 203_400),
        ("sick", "lstm2", 108, 203_472),
        ("sick", "bilstm2", 108, 203_472),
    ],
)
def test_composition_parameters_of_the_papers_baselines(task, kind, memory, count):
    model = sequence_model(task, kind, 7, input_size=300)
    assert model.encoder.memory_size == memory
    assert composition_parameters(model) == count


def test_heads_and_shapes():
    vecs = torch.randn(V, E)
    sst = sequence_model("sst", "bilstm2", V, vecs, memory_size=D, num_classes=3)
    assert isinstance(sst, SentimentModel) and sst.encoder.output_gate
    assert sst.encoder.embedding.weight.requires_grad  # tuned (by SGD in the reference)
    assert sst.classifier.in_features == 2 * 2 * D
    sick = sequence_model("sick", "lstm2", V, vecs, memory_size=D)
    assert isinstance(sick, RelatednessModel) and not sick.encoder.output_gate
    assert not sick.encoder.embedding.weight.requires_grad  # frozen
    assert sick.hidden.in_features == 2 * 2 * D  # [h_x, h_+] of [h_1; h_2]
    a = build_sequences([["w1", "w2"], ["w3"]], {f"w{i}": i for i in range(V)})
    b = build_sequences([["w4"], ["w5", "w6", "w7"]], {f"w{i}": i for i in range(V)})
    assert sst(a).shape == (2, 3)
    assert sick(a, b).shape == (2, 5)
    torch.testing.assert_close(sick(a, b).exp().sum(1), torch.ones(2))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="kind must be one of"):
        sequence_model("sst", "gru", 3)
    with pytest.raises(ValueError, match="task must be"):
        sequence_model("snli", "lstm", 3)
    enc = SequenceLSTM(3, E, D)
    with pytest.raises(TypeError, match="takes a SequenceBatch"):
        enc([Tree(word="x")])
    with pytest.raises(ValueError, match="token id 5 in this batch"):
        enc(build_sequences([["a"]], {"a": 5}))


# ------------------------------------------------------------------------- batches


def test_sentence_words_reads_dependency_and_constituency_trees_in_order():
    words = "a man is playing a guitar".split()
    tree = from_parents([2, 4, 4, 0, 6, 4], words)
    assert sentence_words(tree) == words  # not the post-order
    assert [n.word for n in tree.postorder()] != words
    ptb = Tree.from_ptb("(3 (2 it) (4 (3 (2 is) (4 good)) (2 .)))")
    assert sentence_words(ptb) == ["it", "is", "good", "."]


def test_build_sequences_pads_labels_and_keeps_lengths_on_the_cpu():
    trees = [Tree.from_ptb("(3 (2 b) (4 c))"), Tree.from_ptb("(1 a)")]
    batch = build_sequences(trees, {"a": 0, "b": 1, "c": 2})
    assert batch.tokens.tolist() == [[1, 2], [0, -1]]
    assert batch.lengths.tolist() == [2, 1] and batch.labels.tolist() == [3, 1]
    assert batch.roots.tolist() == [0, 1] and batch.batch_size == 2 and batch.max_token == 2
    moved = batch.to("meta")
    assert moved.tokens.device.type == "meta" and moved.lengths.device.type == "cpu"
    words = build_sequences([["a", "zz"]], {"a": 0}, unk=9)
    assert words.tokens.tolist() == [[0, 9]] and words.labels.tolist() == [IGNORE_INDEX]
    assert build_sequences(trees, {"a": 0, "b": 1, "c": 2}, labels=None).labels is None
    mapped = build_sequences(trees, {"a": 0, "b": 1, "c": 2}, labels={3: 1, 1: 0})
    assert mapped.labels.tolist() == [1, 0]
    fn = collate_sequences({"a": 0, "b": 1, "c": 2})
    assert fn(trees).tokens.tolist() == batch.tokens.tolist()


def test_build_sequences_errors_name_the_word_and_sentence():
    with pytest.raises(ValueError, match=r"word 'q' \(sentence 1\) is not in the vocab"):
        build_sequences([["a"], ["a", "q"]], {"a": 0})
    with pytest.raises(ValueError, match="sentence 0 has no words"):
        build_sequences([[]], {"a": 0})
    with pytest.raises(TypeError, match="list of sentences"):
        build_sequences(Tree(word="a"), {"a": 0})
    with pytest.raises(TypeError, match="sentence 0 must be a Tree or a list of words"):
        build_sequences(["abc"], {"a": 0})
    with pytest.raises(ValueError, match="empty batch"):
        build_sequences([], {"a": 0})
    tree = Tree.from_ptb("(7 (2 a))")
    with pytest.raises(ValueError, match=r"label 7 \(sentence 0\) is not in the label map"):
        build_sequences([tree], {"a": 0}, labels={3: 1})
    with pytest.raises(TypeError, match="labels must be"):
        build_sequences([tree], {"a": 0}, labels=3)


# ------------------------------------------------------------------------- training


def _adagrad_steps(model, loss_fn, steps):
    emb = model.encoder.embedding.weight
    params = [p for p in model.parameters() if p is not emb]
    opt = torch.optim.Adagrad(params, lr=0.05, weight_decay=1e-4)
    emb_opt = torch.optim.SGD([emb], lr=0.1) if emb.requires_grad else None
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        if emb_opt:
            emb_opt.zero_grad()
        loss.backward()
        opt.step()
        if emb_opt:
            emb_opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("kind", ["lstm", "bilstm2"])
def test_a_few_steps_fit_root_labels_of_toy_sentiment_trees(kind):
    """Trained on root labels only (cross-entropy of each sentence's one prediction)."""
    torch.manual_seed(0)
    trees = synthetic_sst(30, seed=4)
    vocab = Vocab.from_trees(trees)
    model = sequence_model("sst", kind, len(vocab), input_size=8, memory_size=8, dropout=0.0)
    batch = build_sequences(trees, vocab)

    def loss():
        logits = model(batch)
        return torch.nn.functional.cross_entropy(logits, batch.labels)

    losses = _adagrad_steps(model, loss, 30)
    assert losses[-1] < 0.7 * losses[0]


def test_a_few_steps_fit_toy_relatedness_pairs():
    torch.manual_seed(0)
    pairs = synthetic_sick(30, seed=5)
    vocab = Vocab.from_trees([t for p in pairs for t in (p.a, p.b)])
    model = sequence_model("sick", "bilstm", len(vocab), torch.randn(len(vocab), 8), memory_size=8)
    a = build_sequences([p.a for p in pairs], vocab, labels=None)
    b = build_sequences([p.b for p in pairs], vocab, labels=None)
    scores = torch.tensor([p.score for p in pairs])
    losses = _adagrad_steps(model, lambda: relatedness_loss(model(a, b), scores), 30)
    assert losses[-1] < 0.7 * losses[0]
    assert isinstance(a, SequenceBatch)


def test_the_python_blocks_of_docs_reproduction_run():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "reproduction.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for code in blocks:
        scope: dict = {}
        exec(compile(code, "docs/reproduction.md", "exec"), scope)
    assert scope["log_p"].shape == (8, 5)
