"""Cells a user might write, for the tests: each follows only the documented cell protocol
(`treelstm.cells`), and ``python -m treelstm.train --cell tests.user_cells:TreeGRU`` finds them."""

from __future__ import annotations

import torch
from torch import nn

from treelstm import ChildSumCell, NaryCell


class TreeGRU(nn.Module):
    """A Child-Sum Tree-GRU: returns h alone (no memory cell), any number of children."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.W = nn.Linear(input_size, 3 * hidden_size)
        self.U_zr = nn.Linear(hidden_size, 2 * hidden_size, bias=False)
        self.U_h = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x, child_h, child_c, child_mask):
        m = child_mask.unsqueeze(-1).to(child_h.dtype)
        h_sum = (child_h * m).sum(1)
        wz, wr, wh = self.W(x).chunk(3, 1)
        z, r = torch.sigmoid(torch.cat([wz, wr], 1) + self.U_zr(h_sum)).chunk(2, 1)
        candidate = torch.tanh(wh + self.U_h(r * h_sum))
        return (1 - z) * h_sum + z * candidate


class OrderedBinaryCell(nn.Module):
    """Left and right child through their own weights: exactly two ordered slots (n_ary = 2).
    Unpacks ``child_h`` into two, so any other K fails loudly."""

    n_ary = 2

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.W = nn.Linear(input_size, hidden_size)
        self.L = nn.Linear(hidden_size, hidden_size, bias=False)
        self.R = nn.Linear(hidden_size, 2 * hidden_size)

    def forward(self, x, child_h, child_c, child_mask):
        m = child_mask.unsqueeze(-1).to(child_h.dtype)
        left, right = (child_h * m).unbind(1)
        c_left, c_right = (child_c * m).unbind(1)
        a, g = self.R(right).chunk(2, 1)
        h = torch.tanh(self.W(x) + self.L(left) + a)
        c = torch.sigmoid(g) * c_left + 0.5 * c_right + h
        return h, c


class Answer42(ChildSumCell):
    """The issue's case: a ChildSumCell subclass whose forward says 42."""

    def forward(self, x, child_h, child_c, child_mask):
        h, c = super().forward(x, child_h, child_c, child_mask)
        return torch.full_like(h, 42.0), c


class Nary42(NaryCell):
    def forward(self, x, child_h, child_c, child_mask):
        h, c = super().forward(x, child_h, child_c, child_mask)
        return torch.full_like(h, 42.0), c


def make_gru(input_size: int, hidden_size: int) -> TreeGRU:
    """A factory function, as ``--cell module:factory`` may name one."""
    return TreeGRU(input_size, hidden_size)


def no_sizes(input_size: int, hidden_size: int) -> nn.Module:
    """A factory whose cell lacks the protocol's attributes (a mistake the tests expect)."""
    return nn.Linear(input_size, hidden_size)
