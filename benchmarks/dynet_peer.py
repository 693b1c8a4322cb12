"""DyNet as a peer in `benchmarks.batching`: the Tree-LSTM written the naive way, one example
at a time, as a recursive Python function, with DyNet's automatic batching on.

DyNet (PyPI ``dynet38``) records each tree's nodes as they are visited; with autobatching, the
graph's forward and backward group operations of the same signature across every tree of the
batch before running them (Neubig, Goldberg & Dyer 2017, "On-the-fly Operation Batching in
Dynamic Computation Graphs"). That is the general-purpose alternative to this project's level
scheduler, so it is the peer to beat.

Benchmark-only: nothing in `treelstm` imports DyNet; `available()` says whether it imports
here. The peer copies the weights of a `ChildSumCell` / `NaryCell` (default switches: output
gate, forget gates with W_f x, one bias per gate; input at the leaves or at every node with a
word) and of the linear head, so `loss` is the same number `benchmarks.batching` computes
(`check` compares them). DyNet runs on one thread.
"""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import torch

__all__ = ["DyNetTreeLSTM", "available"]


def available() -> bool:
    return importlib.util.find_spec("dynet") is not None


def _np(t: torch.Tensor):
    return t.detach().to(torch.float32).cpu().numpy()


class DyNetTreeLSTM:
    """A per-example recursive Tree-LSTM in DyNet with the weights of `cell` and `head`.

    cell       a ChildSumCell or NaryCell with default switches (input_at may be either)
    head       torch.nn.Linear(H, classes): the per-node classifier
    emb        [V + 1, E] frozen word vectors (the last row: nodes without a word)
    """

    def __init__(self, cell, head, emb: torch.Tensor, autobatch: bool = True):
        import dynet as dy

        if not (cell.output_gate and cell.forget_input and not cell.double_bias):
            raise ValueError("the DyNet peer implements the default switches only")
        self.dy, self.autobatch = dy, autobatch
        self.kind = cell.kind
        self.n_ary = getattr(cell, "n_ary", None)
        self.input_at = cell.input_at
        H = self.H = cell.hidden_size
        pc = self.pc = dy.ParameterCollection()
        W, b, U = cell.W.weight, cell.W.bias, cell.U.weight

        def param(t):
            return pc.parameters_from_numpy(_np(t))

        self.params = {
            "W_iou": param(W[: 3 * H]), "b_iou": param(b[: 3 * H]),
            "W_f": param(W[3 * H :]), "b_f": param(b[3 * H :]),
            "U_iou": param(U[: 3 * H]), "U_f": param(U[3 * H :]),
            "W_out": param(head.weight), "b_out": param(head.bias),
        }  # fmt: skip
        self.E = pc.lookup_parameters_from_numpy(_np(emb))
        self.no_word = emb.shape[0] - 1

    def loss(self, trees, vocab, targets) -> float:
        """Forward + backward of the mean cross-entropy over every node of `trees`.

        targets(tree) gives each node's class in the tree's post-order. Returns the loss.
        """
        dy = self.dy
        dy.renew_cg(autobatching=self.autobatch)
        self.p = SimpleNamespace(**{k: v.expr() for k, v in self.params.items()})
        losses = []
        for t in trees:
            self._node(t, vocab, iter(targets(t)), losses)
        total = dy.esum(losses) * (1.0 / len(losses))
        value = total.value()
        total.backward()
        return value

    def _input(self, node, vocab, leaf: bool):
        """(W_iou x + b_iou, W_f x + b_f) of a node; biases alone where no input enters."""
        dy, p = self.dy, self.p
        word = None if node.word is None else vocab.get(node.word)
        if word is None or (self.input_at == "leaves" and not leaf):
            return p.b_iou, p.b_f
        x = dy.lookup(self.E, word, update=False)
        iou = dy.affine_transform([p.b_iou, p.W_iou, x])
        return iou, (None if leaf else dy.affine_transform([p.b_f, p.W_f, x]))

    def _node(self, node, vocab, labels, losses):
        """Post-order recursion over one tree: returns (h, c) of `node`."""
        dy, H, p = self.dy, self.H, self.p
        kids = [self._node(k, vocab, labels, losses) for k in node.children]
        iou, fx = self._input(node, vocab, leaf=not kids)
        if not kids:
            c_sum = None
        elif self.kind == "childsum":
            iou = iou + p.U_iou * dy.esum([h for h, _ in kids])
            gates = [dy.logistic(fx + p.U_f * h) for h, _ in kids]
            c_sum = dy.esum([dy.cmult(f, c) for f, (_, c) in zip(gates, kids, strict=True)])
        else:
            pad = [(dy.zeros(H), dy.zeros(H))] * (self.n_ary - len(kids))
            slots = kids + pad
            hcat = dy.concatenate([h for h, _ in slots])
            iou = iou + p.U_iou * hcat
            f = dy.logistic(dy.concatenate([fx] * self.n_ary) + p.U_f * hcat)
            parts = [dy.pick_range(f, k * H, (k + 1) * H) for k in range(self.n_ary)]
            c_sum = dy.esum([dy.cmult(fk, c) for fk, (_, c) in zip(parts, slots, strict=True)])
        i = dy.logistic(dy.pick_range(iou, 0, H))
        o = dy.logistic(dy.pick_range(iou, H, 2 * H))
        u = dy.tanh(dy.pick_range(iou, 2 * H, 3 * H))
        c = dy.cmult(i, u) if c_sum is None else dy.cmult(i, u) + c_sum
        h = dy.cmult(o, dy.tanh(c))
        scores = dy.affine_transform([p.b_out, p.W_out, h])
        losses.append(dy.pickneglogsoftmax(scores, next(labels)))
        return h, c


def note_unavailable() -> None:
    print("peer dynet: `import dynet` fails here (pip install dynet38); row skipped",
          file=sys.stderr)  # fmt: skip
