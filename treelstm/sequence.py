"""Sequential LSTM baselines of Tai, Socher & Manning (2015): LSTM, bidirectional LSTM and their
2-layer versions, in the shape of the paper's reference code (stanfordnlp/treelstm).

    sentences --(build_sequences)--> SequenceBatch --(SequenceLSTM)--> sentence vectors --> head

A sentence is read left to right (and, bidirectional, right to left) over packed sequences;
its vector is the final hidden state of every layer, concatenated:

    LSTM             [h_1]                      (2 layers: [h_1; h_2])
    Bi-LSTM          [h_1; h_1']                (2 layers: [h_1; h_2; h_1'; h_2'])

(h_l: layer l after the last word; h_l': layer l of the backward pass after the first word).
What the reference does, and so what this module does:

- **Tied directions.** The backward LSTM shares every weight with the forward one
  (``share_params(lstm_b, lstm)``; "tying the forward and backward weights improves
  performance"), so a Bi-LSTM has the parameters of an LSTM: that is why the paper's Table 1
  gives both the same memory size. Each direction is its own L-layer stack (layer 2 of the
  backward pass reads layer 1 of the backward pass only), unlike ``nn.LSTM(bidirectional=True)``.
  Here one ``nn.LSTM`` runs 2B sequences: the B sentences and the B reversed sentences.
- **Two bias vectors per gate** (one per Linear in the reference): ``nn.LSTM``'s own layout.
- **SST** (``LSTMSentiment``): output gate on; the sentence vector -> dropout 0.5 -> linear ->
  log-softmax, one prediction per sentence, trained on the root label only (the paper:
  sequence models predict at the root only); embeddings tuned by plain SGD (lr 0.1).
- **SICK** (``LSTMSim``): **no output gate** (h = tanh c, ``gate_output = false``), which
  ``nn.LSTM`` cannot express, so ``output_gate=False`` runs `PackedLSTM`, a loop over the
  packed time steps with the same inputs, outputs and parameter layout (3 gate blocks i, f, g
  instead of 4); it is tested against ``nn.LSTM`` with the output gate switched on. The two
  sentence vectors go through the Tree-LSTM's similarity head (`models.RelatednessModel`);
  embeddings frozen.

The encoder returns `models.Encoded` with one row per sentence (each sentence is its own root),
so the Tree-LSTM heads `SentimentModel` and `RelatednessModel` take it unchanged, and a
`SequenceBatch` has ``labels`` / ``roots`` / ``batch_size`` like a `Schedule`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from .formats.parents import _sentence_order
from .labels import IGNORE_INDEX, is_unlabelled
from .models import Encoded, RelatednessModel, SentimentModel
from .schedule import _UNK_HINT, _all_ints, _lookup
from .tree import Tree

__all__ = [
    "KINDS",
    "PAPER_MEMORY",
    "PackedLSTM",
    "SequenceBatch",
    "SequenceLSTM",
    "build_sequences",
    "collate_sequences",
    "composition_parameters",
    "sentence_words",
    "sequence_model",
]

#: kind -> (layers, bidirectional), the reference's ``-m lstm|bilstm -l 1|2``.
KINDS = {"lstm": (1, False), "bilstm": (1, True), "lstm2": (2, False), "bilstm2": (2, True)}

#: Memory size d of each baseline (Tai et al. 2015, Table 1), chosen there so that the
#: composition parameters roughly match the Tree-LSTMs' (see `composition_parameters`).
PAPER_MEMORY = {
    "sst": {"lstm": 168, "bilstm": 168, "lstm2": 108, "bilstm2": 108},
    "sick": {"lstm": 150, "bilstm": 150, "lstm2": 108, "bilstm2": 108},
}


# ------------------------------------------------------------------------------------ batches


@dataclass(frozen=True)
class SequenceBatch:
    """B sentences as a padded id matrix.

    tokens     [B, T] int64  vocabulary ids, -1 after a sentence's end (T = the longest)
    lengths    [B] int64     words per sentence, always on the CPU (``pack_padded_sequence``
                             reads them there; keeping them there avoids a device sync)
    labels     [B] int64     each sentence's label (its tree's root label), IGNORE_INDEX where
                             it has none; None when not asked for
    max_token  the largest id in the batch (-1 if none), a Python int, checked by the model

    Like a `Schedule` with one node per sentence: ``roots`` is ``arange(B)`` and
    ``batch_size`` is B, so loss and metric code written for a schedule's roots
    (``logits[batch.roots]``, ``batch.labels[batch.roots]``) works unchanged.
    """

    tokens: Tensor
    lengths: Tensor
    labels: Tensor | None
    max_token: int = -1

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.tokens.shape[0]

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    @property
    def roots(self) -> Tensor:
        """[B] the row of each sentence's prediction: 0..B-1."""
        return torch.arange(self.batch_size, device=self.device)

    def to(self, device, non_blocking: bool = False) -> SequenceBatch:
        """The same batch with tokens and labels on `device` (lengths stay on the CPU)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> SequenceBatch:
        """Page-locked copies, so `.to(cuda, non_blocking=True)` overlaps (DataLoader calls it)."""
        return self._map(lambda t: t.pin_memory())

    def _map(self, fn: Callable[[Tensor], Tensor]) -> SequenceBatch:
        changes = {
            f.name: fn(getattr(self, f.name))
            for f in fields(self)
            if f.name != "lengths" and isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **changes)


def sentence_words(tree: Tree) -> list[str]:
    """The words of a tree in reading order: the leaves left to right for a constituency tree
    (SST), every node's word in sentence order for a dependency tree from
    ``Tree.from_parents`` (SICK: the ``*.toks`` line back). Nodes without a word are skipped."""
    nodes, _, order = _sentence_order(tree)
    return [nodes[i].word for i in order if nodes[i].word is not None]


def build_sequences(
    sentences: Sequence[Tree | Sequence[str]],
    vocab: Mapping[str, int] | Callable[[str], int],
    *,
    labels: str | Mapping | Callable | None = "auto",
    unk: int | None = None,
) -> SequenceBatch:
    """A batch of sentences: each a `Tree` (its words by `sentence_words`, its label the
    root's) or a list of words (no label).

    vocab   a word -> id mapping (`Vocab`, dict) or callable, as for `build_schedule`; a word
            it lacks raises ValueError naming the word and its sentence, unless `unk` is the id
            every unknown word gets.
    labels  "auto": integer root labels as they are (SST), IGNORE_INDEX for an unlabelled
            root or a word list, labels=None when a root label is not an integer; a mapping
            or callable: every root label through it; None: no labels.
    """
    if isinstance(sentences, str | Tree):
        raise TypeError("build_sequences takes a list of sentences (trees or word lists)")
    items = list(sentences)
    if not items:
        raise ValueError("build_sequences: empty batch (no sentences)")
    words = [
        sentence_words(s) if isinstance(s, Tree) else _word_list(s, b) for b, s in enumerate(items)
    ]
    for b, w in enumerate(words):
        if not w:
            raise ValueError(f"build_sequences: sentence {b} has no words")
    ids = _ids(words, vocab, unk)
    T = max(len(w) for w in words)
    tokens = torch.full((len(items), T), -1, dtype=torch.int64)
    for b, row in enumerate(ids):
        tokens[b, : len(row)] = torch.tensor(row, dtype=torch.int64)
    return SequenceBatch(
        tokens=tokens,
        lengths=torch.tensor([len(w) for w in words], dtype=torch.int64),
        labels=_root_labels(items, labels),
        max_token=max(max(row) for row in ids),
    )


def collate_sequences(
    vocab, *, labels: str | Mapping | Callable | None = "auto", unk: int | None = None
) -> Callable[[Sequence], SequenceBatch]:
    """A picklable DataLoader ``collate_fn`` building a `SequenceBatch` in the worker."""
    return partial(build_sequences, vocab=vocab, labels=labels, unk=unk)


def _word_list(sentence, b: int) -> list[str]:
    if isinstance(sentence, str) or not all(isinstance(w, str) for w in sentence):
        raise TypeError(
            f"build_sequences: sentence {b} must be a Tree or a list of words (str), "
            f"not {type(sentence).__name__}"
        )
    return list(sentence)


def _ids(words: list[list[str]], vocab, unk: int | None) -> list[list[int]]:
    lookup = _lookup(vocab, unk)
    out = []
    for b, sentence in enumerate(words):
        try:
            row = [lookup(w) for w in sentence]
        except LookupError:
            missing = next(w for w in sentence if _missing(lookup, w))
            raise ValueError(
                f"build_sequences: word {missing!r} (sentence {b}) is not in the vocab; "
                + _UNK_HINT.replace("build_schedule", "build_sequences")
            ) from None
        if not _all_ints(row) or min(row) < 0:
            raise ValueError(
                f"build_sequences: the vocab gave {row!r} for sentence {b}; ids must be "
                "integers >= 0"
            )
        out.append(row)
    return out


def _missing(lookup, word: str) -> bool:
    try:
        lookup(word)
    except LookupError:
        return True
    return False


def _root_labels(items: list, spec) -> Tensor | None:
    """[B] class ids of the sentences' (root) labels, or None (see `build_sequences`)."""
    if spec is None:
        return None
    raw = [s.label if isinstance(s, Tree) else None for s in items]
    if isinstance(spec, str):
        if spec != "auto":
            raise ValueError(
                'build_sequences: labels must be "auto", a mapping, a callable or None, '
                f"not {spec!r}"
            )
        if not all(is_unlabelled(x) or _all_ints([x]) for x in raw):
            return None  # e.g. "NP": pass a LabelMap
        get = int
    elif hasattr(spec, "__getitem__"):  # a mapping or a LabelMap
        get = spec.__getitem__
    elif callable(spec):
        get = spec
    else:
        raise TypeError(
            'build_sequences: labels must be "auto", a mapping, a callable or None, '
            f"not a {type(spec).__name__}"
        )
    ids = []
    for b, x in enumerate(raw):
        try:
            ids.append(IGNORE_INDEX if is_unlabelled(x) else get(x))
        except LookupError:
            raise ValueError(
                f"build_sequences: label {x!r} (sentence {b}) is not in the label map"
            ) from None
    if not _all_ints(ids):
        raise TypeError("build_sequences: the label map must give integer class ids")
    return torch.tensor(ids, dtype=torch.int64)


# ------------------------------------------------------------------------------------ the LSTM


class PackedLSTM(nn.Module):
    """A stacked LSTM over a `PackedSequence`, optionally without output gate (h = tanh c,
    the reference code's relatedness LSTM). Same call and parameter names as ``nn.LSTM``
    (``weight_ih_l{k}`` [G*H, in], ``weight_hh_l{k}`` [G*H, H], ``bias_ih_l{k}``,
    ``bias_hh_l{k}`` [G*H]; gate blocks in nn.LSTM's order i, f, g(, o); G = 4 with the
    output gate, 3 without), initialised as nn.LSTM does (uniform ±1/sqrt(H)).

    ``forward(packed) -> (output PackedSequence [N, H], (h_n, c_n) [L, B, H])``, B in the
    original (unsorted) order, as nn.LSTM returns them. One input projection for all time
    steps of a layer, then one small matmul per time step over the still-running sequences.
    """

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, *, output_gate: bool = False
    ) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1 or num_layers < 1:
            raise ValueError(
                f"PackedLSTM: sizes must be positive, got input_size={input_size}, "
                f"hidden_size={hidden_size}, num_layers={num_layers}"
            )
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.output_gate = output_gate
        G = 4 if output_gate else 3
        for k in range(num_layers):
            n_in = input_size if k == 0 else hidden_size
            self.register_parameter(
                f"weight_ih_l{k}", nn.Parameter(torch.empty(G * hidden_size, n_in))
            )
            self.register_parameter(
                f"weight_hh_l{k}", nn.Parameter(torch.empty(G * hidden_size, hidden_size))
            )
            self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(G * hidden_size)))
            self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(G * hidden_size)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = self.hidden_size**-0.5
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, packed: PackedSequence):
        if not isinstance(packed, PackedSequence):
            raise TypeError("PackedLSTM takes a PackedSequence (torch.nn.utils.rnn.pack_*)")
        sizes = packed.batch_sizes.tolist()  # a CPU tensor: no device sync
        x = packed.data
        finals = []
        for k in range(self.num_layers):
            x, h_last, c_last = self._layer(x, sizes, k)
            finals.append((h_last, c_last))
        h_n = torch.stack([h for h, _ in finals])
        c_n = torch.stack([c for _, c in finals])
        if packed.unsorted_indices is not None:
            h_n = h_n[:, packed.unsorted_indices]
            c_n = c_n[:, packed.unsorted_indices]
        out = PackedSequence(x, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        return out, (h_n, c_n)

    def _layer(self, x: Tensor, sizes: list[int], k: int) -> tuple[Tensor, Tensor, Tensor]:
        """One layer over the packed rows x [N, in] -> (outputs [N, H], last h, last c [B, H]),
        sequences in sorted (longest first) order."""
        H = self.hidden_size
        w_hh = getattr(self, f"weight_hh_l{k}")
        bias = getattr(self, f"bias_ih_l{k}") + getattr(self, f"bias_hh_l{k}")
        xw = torch.addmm(bias, x, getattr(self, f"weight_ih_l{k}").t())  # every step at once
        B = sizes[0]
        h = x.new_zeros(B, H)
        c = x.new_zeros(B, H)
        hs, h_done, c_done = [], [], []
        start = 0
        for t, bs in enumerate(sizes):  # the first bs sequences are still running at step t
            h, c = h[:bs], c[:bs]
            a = torch.addmm(xw[start : start + bs], h, w_hh.t())
            start += bs
            i = torch.sigmoid(a[:, :H])
            f = torch.sigmoid(a[:, H : 2 * H])
            g = torch.tanh(a[:, 2 * H : 3 * H])
            c = f * c + i * g
            h = torch.sigmoid(a[:, 3 * H :]) * torch.tanh(c) if self.output_gate else torch.tanh(c)
            hs.append(h)
            # Sequences nxt..bs-1 end here: their last states, collected without an index
            # tensor (which would have to be copied to the device).
            nxt = sizes[t + 1] if t + 1 < len(sizes) else 0
            if nxt < bs:
                h_done.append(h[nxt:bs])
                c_done.append(c[nxt:bs])
        return torch.cat(hs), torch.cat(h_done[::-1]), torch.cat(c_done[::-1])

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"output_gate={self.output_gate}"
        )


class SequenceLSTM(nn.Module):
    """Embedding + LSTM over each sentence: ``encoder(batch) -> Encoded(h, c, root_h)`` with
    h = root_h = the sentence vectors [B, hidden_size] and c the matching memory cells.

    num_embeddings  vocabulary size V (ids 0..V-1; a padding row is kept at index V)
    input_size      word vector size E
    memory_size     the LSTM's hidden size d (the paper's memory dimension)
    num_layers      1 or more; the sentence vector holds every layer's final state
    bidirectional   also read right to left with the same weights (the reference's Bi-LSTM)
    output_gate     True: ``nn.LSTM`` (SST); False: h = tanh c, via `PackedLSTM` (SICK)
    embeddings, freeze_embeddings   as for `TreeLSTM`

    ``hidden_size`` is the sentence vector's size, num_layers * d * (2 if bidirectional), what
    a head (`SentimentModel`, `RelatednessModel`) reads.
    """

    def __init__(
        self,
        num_embeddings: int,
        input_size: int,
        memory_size: int,
        num_layers: int = 1,
        *,
        bidirectional: bool = False,
        output_gate: bool = True,
        embeddings: Tensor | None = None,
        freeze_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings + 1, input_size, padding_idx=num_embeddings)
        if embeddings is not None:
            if tuple(embeddings.shape) != (num_embeddings, input_size):
                raise ValueError(
                    f"embeddings must be [{num_embeddings}, {input_size}], "
                    f"got {tuple(embeddings.shape)}"
                )
            with torch.no_grad():
                self.embedding.weight[:num_embeddings] = embeddings
        self.embedding.weight.requires_grad_(not freeze_embeddings)
        if output_gate:
            self.lstm = nn.LSTM(input_size, memory_size, num_layers, batch_first=True)
        else:
            self.lstm = PackedLSTM(input_size, memory_size, num_layers, output_gate=False)
        self.memory_size = memory_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.output_gate = output_gate

    @property
    def hidden_size(self) -> int:
        return self.num_layers * self.memory_size * (2 if self.bidirectional else 1)

    def forward(self, batch: SequenceBatch) -> Encoded:
        """batch (from `build_sequences`) -> Encoded(h [B, R], c [B, R], root_h [B, R])."""
        tokens, lengths = self._tokens(batch)
        B = tokens.shape[0]
        if self.bidirectional:
            tokens = torch.cat([tokens, _reverse(tokens)])
            lengths = torch.cat([lengths, lengths])
        pad = self.embedding.padding_idx
        x = self.embedding(torch.where(tokens >= 0, tokens, pad))
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, (h_n, c_n) = self.lstm(packed)  # [L, B', d], in the batch's order
        h, c = (_join(s, B, self.bidirectional) for s in (h_n, c_n))
        return Encoded(h, c, h)

    def _tokens(self, batch) -> tuple[Tensor, Tensor]:
        if not isinstance(batch, SequenceBatch):
            raise TypeError(
                f"a sequence model takes a SequenceBatch (from build_sequences), not a "
                f"{type(batch).__name__}"
            )
        pad = self.embedding.padding_idx
        if batch.max_token >= pad:
            raise ValueError(
                f"token id {batch.max_token} in this batch, but SequenceLSTM(num_embeddings={pad}) "
                f"has ids 0..{pad - 1}: pass the vocabulary size, len(vocab)"
            )
        return batch.tokens, batch.lengths.cpu()

    def extra_repr(self) -> str:
        return f"bidirectional={self.bidirectional} (directions share weights)"


def _reverse(tokens: Tensor) -> Tensor:
    """[B, T] each row's ids reversed, the padding (-1, always at the end) left where it is."""
    T = tokens.shape[1]
    t = torch.arange(T, device=tokens.device)
    n = (tokens >= 0).sum(1, keepdim=True)  # the lengths, counted where the ids are
    idx = torch.where(t < n, n - 1 - t, t)
    return tokens.gather(1, idx)


def _join(state: Tensor, B: int, bidirectional: bool) -> Tensor:
    """[L, B', d] final states -> [B, L*d] (layers side by side), the backward pass's after
    the forward pass's when bidirectional (the reference's JoinTable order)."""
    L, n, d = state.shape
    flat = state.transpose(0, 1).reshape(n, L * d)
    return torch.cat([flat[:B], flat[B:]], dim=1) if bidirectional else flat


# ------------------------------------------------------------------------------------ models


def sequence_model(
    task: str,
    kind: str,
    num_embeddings: int,
    embeddings: Tensor | None = None,
    *,
    input_size: int | None = None,
    memory_size: int | None = None,
    num_classes: int = 5,
    dropout: float = 0.5,
    sim_hidden: int = 50,
) -> nn.Module:
    """A baseline in the reference code's configuration.

    task "sst": ``SentimentModel(SequenceLSTM(output gate, tuned embeddings), num_classes,
    dropout)`` -> log-scores [B, num_classes], one row per sentence (num_classes 5 fine, 3 for
    the reference's binary protocol). task "sick": ``RelatednessModel(SequenceLSTM(no output
    gate, frozen embeddings), sim_hidden)`` -> log p [B, 5] of a pair of batches.
    kind: "lstm", "bilstm", "lstm2", "bilstm2" (`KINDS`); memory_size defaults to the paper's
    (`PAPER_MEMORY`); input_size to the embeddings' width (300 without embeddings).
    """
    if task not in PAPER_MEMORY:
        raise ValueError(f"task must be 'sst' or 'sick', got {task!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    layers, bidirectional = KINDS[kind]
    E = input_size or (embeddings.shape[1] if embeddings is not None else 300)
    sst = task == "sst"
    encoder = SequenceLSTM(
        num_embeddings,
        E,
        memory_size or PAPER_MEMORY[task][kind],
        layers,
        bidirectional=bidirectional,
        output_gate=sst,
        embeddings=embeddings,
        freeze_embeddings=not sst,
    )
    if sst:
        return SentimentModel(encoder, num_classes, dropout)
    return RelatednessModel(encoder, sim_hidden)


def composition_parameters(model: nn.Module) -> int:
    """The paper's |θ| (Table 1): parameters of the composition function only — the LSTM (or
    Tree-LSTM cell) — without word vectors and without the task head."""
    encoder = getattr(model, "encoder", model)
    part = getattr(encoder, "lstm", None)
    if part is None:
        part = getattr(encoder, "cell", None)
    if part is None:
        raise TypeError(f"no LSTM or Tree-LSTM cell found in a {type(model).__name__}")
    return sum(p.numel() for p in part.parameters())
