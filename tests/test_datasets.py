"""SST / SICK readers, data location, download check, Vocab and GloVe-format vectors
(treelstm.data)."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings

from treelstm import data as ds
from treelstm.data import locate
from treelstm.formats import write_ptb
from treelstm.tree import Tree

from .strategies import trees

REAL = os.environ.get("TREELSTM_DATA")
needs_real = pytest.mark.skipif(
    not (REAL and (Path(REAL) / "sst" / "train.txt").exists()),
    reason="TREELSTM_DATA (with sst/, sick/, glove/) not set",
)


def write_sst(folder: Path, n: int = 30) -> dict[str, list[Tree]]:
    """Generated SST-like train/dev/test files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, split in enumerate(ds.SST_SPLITS):
        out[split] = ds.synthetic_sst(n, seed=k)
        write_ptb(folder / f"{split}.txt", out[split])
    return out


def write_sick(folder: Path, n: int = 12) -> dict[str, list[ds.Pair]]:
    """Generated SICK-layout split folders (toks, parents, sim, id) in ``folder``."""
    out = {}
    for k, split in enumerate(ds.SICK_SPLITS):
        d = folder / split
        d.mkdir(parents=True, exist_ok=True)
        pairs = ds.synthetic_sick(n, seed=k)
        for side in "ab":
            toks, parents = [], []
            for p in pairs:
                tree = getattr(p, side)
                toks.append(" ".join(w for w in _sentence(tree)))
                parents.append(" ".join(map(str, _heads(tree))))
            (d / f"{side}.toks").write_text("\n".join(toks) + "\n")
            (d / f"{side}.parents").write_text("\n".join(parents) + "\n")
        (d / "sim.txt").write_text("".join(f"{p.score}\n" for p in pairs))
        (d / "id.txt").write_text("".join(f"{p.id}\n" for p in pairs))
        out[split] = pairs
    return out


def _sentence(tree: Tree) -> list[str]:
    return [n.word for n in tree.postorder()]


def _heads(tree: Tree) -> list[int]:
    """1-based heads for the node order of `_sentence` (post-order)."""
    order = tree.postorder()
    pos = {id(n): i + 1 for i, n in enumerate(order)}
    heads = [0] * len(order)
    for n in order:
        for c in n.children:
            heads[pos[id(c)] - 1] = pos[id(n)]
    return heads


# ----------------------------------------------------------------------------- SST


def test_load_sst_fine_reads_every_split(tmp_path):
    made = write_sst(tmp_path)
    got = ds.load_sst(tmp_path, "fine")
    assert got == made


def test_load_sst_binary_drops_neutral_roots_and_relabels_every_node(tmp_path):
    made = write_sst(tmp_path, n=40)
    got = ds.load_sst(tmp_path, "binary")
    for split in ds.SST_SPLITS:
        kept = [t for t in made[split] if t.label != 2]
        assert len(got[split]) == len(kept) < len(made[split])
        for old, new in zip(kept, got[split], strict=True):
            for a, b in zip(old.postorder(), new.postorder(), strict=True):
                assert b.label == {0: 0, 1: 0, 2: 1, 3: 2, 4: 2}[a.label]
                assert a.word == b.word
            assert new.label in (0, 2)


@given(trees())
@settings(max_examples=50, deadline=None)
def test_binarize_keeps_shape_and_words(t):
    """binarize_labels changes labels only, each by the 0,1->0 / 2->1 / 3,4->2 map."""
    b = ds.binarize_labels(t)
    fa, fb = t.flat(), b.flat()
    assert (fa.parent == fb.parent).all() and fa.words == fb.words
    assert fb.labels == tuple((0, 0, 1, 2, 2)[x] for x in fa.labels)


def test_load_sst_missing_file_names_path_and_howto(tmp_path):
    with pytest.raises(ds.DataNotFound) as e:
        ds.load_sst(tmp_path)
    assert str(tmp_path / "train.txt") in str(e.value)
    assert "trainDevTestTrees_PTB.zip" in str(e.value)


def test_load_sst_malformed_line_names_file_and_line(tmp_path):
    write_sst(tmp_path, n=3)
    with open(tmp_path / "dev.txt", "a") as f:
        f.write("(2 (2 good) (3 film)\n")
    with pytest.raises(ValueError, match=r"dev\.txt:4:"):
        ds.load_sst(tmp_path)


def test_load_sst_label_out_of_range(tmp_path):
    write_sst(tmp_path, n=2)
    (tmp_path / "test.txt").write_text("(2 (1 a) (2 b))\n(7 (1 a) (2 b))\n")
    with pytest.raises(ValueError, match=r"test\.txt:2: sentiment label 7"):
        ds.load_sst(tmp_path)


def test_load_sst_rejects_unknown_mode(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        ds.load_sst(tmp_path, "coarse")


# ----------------------------------------------------------------------------- locating


def test_find_data_accepts_root_or_task_folder(tmp_path, monkeypatch):
    write_sst(tmp_path / "sst", n=2)
    monkeypatch.delenv("TREELSTM_DATA", raising=False)
    assert ds.find_data("sst", tmp_path) == tmp_path / "sst"
    assert ds.find_data("sst", tmp_path / "sst") == tmp_path / "sst"
    monkeypatch.setenv("TREELSTM_DATA", str(tmp_path))
    assert ds.find_data("sst") == tmp_path / "sst"


def test_find_data_missing_names_path_tried(tmp_path, monkeypatch):
    monkeypatch.delenv("TREELSTM_DATA", raising=False)
    with pytest.raises(ds.DataNotFound, match=str(tmp_path / "sick")) as e:
        ds.find_data("sick", tmp_path)
    assert "not downloaded" in str(e.value)
    with pytest.raises(ds.DataNotFound, match="TREELSTM_DATA is not set") as e:
        ds.find_data("sst", None, download=False, cache_dir=tmp_path / "cache")
    assert str(tmp_path / "cache" / "sst") in str(e.value)


def _zip_of(folder: Path, path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name in ds.SST_MD5:
            z.write(folder / name, f"trees/{name}")


def test_download_checks_md5_then_unpacks(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_sst(src, n=3)
    _zip_of(src, tmp_path / "sst.zip")
    url = (tmp_path / "sst.zip").as_uri()
    with pytest.raises(ValueError, match="MD5"):  # generated files are not the official ones
        ds.download_sst(tmp_path / "bad", url=url)
    assert not (tmp_path / "bad").exists()
    sums = {n: hashlib.md5((src / n).read_bytes()).hexdigest() for n in ds.SST_MD5}
    monkeypatch.setattr(locate, "SST_MD5", sums)
    dest = ds.download_sst(tmp_path / "cache" / "sst", url=url)
    assert ds.load_sst(dest) == ds.load_sst(src)


def test_download_offline_is_a_clear_error(tmp_path):
    with pytest.raises(ds.DataNotFound, match="could not download"):
        ds.download_sst(tmp_path / "x", url=(tmp_path / "nothing.zip").as_uri())


# ----------------------------------------------------------------------------- SICK


def test_read_sick_round_trips_generated_layout(tmp_path):
    made = write_sick(tmp_path)
    got = ds.load_sick(tmp_path)
    for split in ds.SICK_SPLITS:
        assert [p.score for p in got[split]] == [p.score for p in made[split]]
        assert [p.id for p in got[split]] == [p.id for p in made[split]]
        for p, q in zip(got[split], made[split], strict=True):
            assert p.a.size == q.a.size and sorted(p.a.flat().words) == sorted(q.a.flat().words)
            assert p.a.height == q.a.height and p.b.height == q.b.height


def test_sick_missing_file(tmp_path):
    write_sick(tmp_path)
    (tmp_path / "dev" / "b.parents").unlink()
    with pytest.raises(ds.DataNotFound, match=r"dev/b\.parents.*not downloaded"):
        ds.load_sick(tmp_path)


def test_sick_bad_score_names_file_and_line(tmp_path):
    write_sick(tmp_path, n=4)
    (tmp_path / "train" / "sim.txt").write_text("4.5\n3.0\nfive\n2\n")
    with pytest.raises(ValueError, match=r"train/sim\.txt:3: relatedness 'five'"):
        ds.read_sick_split(tmp_path / "train")
    (tmp_path / "train" / "sim.txt").write_text("4.5\n3.0\n5.5\n2\n")
    with pytest.raises(ValueError, match=r"sim\.txt:3: relatedness 5.5 is outside"):
        ds.read_sick_split(tmp_path / "train")


def test_sick_bad_parents_and_counts_name_file_and_line(tmp_path):
    write_sick(tmp_path, n=4)
    d = tmp_path / "test"
    lines = (d / "a.parents").read_text().splitlines()
    lines[1] = "0 0" + " 1" * (len(lines[1].split()) - 2)
    (d / "a.parents").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"test/a\.parents:2: two roots"):
        ds.read_sick_split(d)
    (d / "id.txt").write_text("1\n2\n")
    with pytest.raises(ValueError, match=r"id\.txt:3: 2 lines but .*sim\.txt has 4"):
        ds.read_sick_split(d)


# ----------------------------------------------------------------------------- vocab, vectors


def test_vocab_normalizes_lowercases_and_maps_unknown_to_zero():
    v = ds.Vocab(["-LRB-", "Good", "1\\/2"], lower=True)
    assert v.itos == ["<unk>", "(", "good", "1/2"]
    assert v("(") == v("-LRB-") == 1 and v("GOOD") == 2 and v("1\\/2") == 3
    assert v("never-seen") == 0 and "never-seen" not in v and len(v) == 4
    cased = ds.Vocab(["Good", "good"])
    assert len(cased) == 3 and cased("Good") != cased("good")


def test_load_vectors_coverage_and_oov_rows(tmp_path):
    path = tmp_path / "vec.txt"
    path.write_text("good 1 2 3\n( 4 5 6\nunused 7 8 9\ngood 0 0 0\n")
    v = ds.Vocab(["good", "-LRB-", "film"])
    w, cov = ds.load_vectors(path, v, generator=torch.Generator().manual_seed(0))
    assert w.shape == (4, 3) and w.dtype == torch.float32
    assert w[v("good")].tolist() == [1, 2, 3]  # the first occurrence wins
    assert w[v("-LRB-")].tolist() == [4, 5, 6]
    assert w[v("film")].abs().max() <= 0.05 and w[0].abs().max() <= 0.05
    assert (cov.found, cov.total, cov.dim) == (2, 3, 3)
    assert "2/3" in str(cov) and "66.67%" in str(cov)


def test_load_vectors_errors_name_file_and_line(tmp_path):
    path = tmp_path / "vec.txt"
    path.write_text("a 1 2\nb 3\n")
    with pytest.raises(ValueError, match=r"vec\.txt:2: expected a word and 2 numbers"):
        ds.load_vectors(path, ds.Vocab(["a"]))
    path.write_text("a 1 2\nb 3 x\n")
    with pytest.raises(ValueError, match=r"vec\.txt:2: a vector entry is not a number"):
        ds.load_vectors(path, ds.Vocab(["a", "b"]))
    with pytest.raises(ds.DataNotFound, match="none.txt: no such file"):
        ds.load_vectors(tmp_path / "none.txt", ds.Vocab())


def test_synthetic_data_is_deterministic_and_valid():
    assert ds.synthetic_sst(5, seed=3) == ds.synthetic_sst(5, seed=3)
    for t in ds.synthetic_sst(20):
        assert all(n.label in range(5) for n in t.preorder())
        assert all(len(n.children) in (0, 2) for n in t.preorder())
    for p in ds.synthetic_sick(20):
        assert 1 <= p.score <= 5 and p.a.size >= 2


# ----------------------------------------------------------------------------- real files


@needs_real
def test_real_sst_slices():
    root = ds.find_data("sst", REAL)
    fine = ds.load_sst(root, "fine", limit=40)
    assert [len(v) for v in fine.values()] == [40, 40, 40]
    binary = ds.load_sst(root, "binary", limit=40)
    for split in ds.SST_SPLITS:
        assert len(binary[split]) == sum(t.label != 2 for t in fine[split])
        assert all(t.label in (0, 2) for t in binary[split])
    # train line 4342 holds a token with a NO-BREAK SPACE; it must stay one word
    with open(Path(root) / "train.txt", encoding="utf-8") as f:
        line = next(x for i, x in enumerate(f, 1) if i == 4342)
    t = Tree.from_ptb(line)
    assert any("\xa0" in w for w in t.words())


@needs_real
def test_real_sick_and_vectors_slices():
    root = ds.find_data("sick", REAL)
    sick = ds.load_sick(root, limit=20)
    assert all(len(v) == 20 for v in sick.values())
    assert all(1 <= p.score <= 5 for v in sick.values() for p in v)
    vocab = ds.Vocab.from_trees(t for v in sick.values() for p in v for t in (p.a, p.b))
    glove = Path(REAL) / "glove" / "glove.840B.300d.sick.txt"
    w, cov = ds.load_vectors(glove, vocab)
    assert w.shape == (len(vocab), 300) and cov.fraction > 0.95


# ----------------------------------------------------------------------------- bad data (issue 11)


def test_an_empty_split_is_an_error_naming_the_file(tmp_path):
    """Issue 11, case 6: an empty train split trained on nothing and exited 0."""
    write_sst(tmp_path / "sst", n=4)
    (tmp_path / "sst" / "train.txt").write_text("")
    with pytest.raises(ValueError, match=r"sst/train\.txt: no trees: the train split is empty"):
        ds.load_sst(tmp_path / "sst")
    (tmp_path / "sst" / "train.txt").write_text("(2 (2 a) (2 b))\n")  # neutral root only
    with pytest.raises(ValueError, match=r"train\.txt: no trees with a non-neutral root"):
        ds.load_sst(tmp_path / "sst", "binary")
    write_sick(tmp_path / "sick", n=3)
    for name in ds.SICK_FILES:
        (tmp_path / "sick" / "dev" / name).write_text("")
    with pytest.raises(ValueError, match=r"dev/sim\.txt: no pairs: the dev split is empty"):
        ds.load_sick(tmp_path / "sick")


def test_a_node_wider_than_the_cell_is_refused_at_load_with_file_and_line(tmp_path):
    """Issue 11, case 6: a tree wider than n_ary failed mid-training without file:line."""
    write_sst(tmp_path, n=3)
    with open(tmp_path / "dev.txt", "a") as f:
        f.write("(2 (2 a) (2 b) (2 c))\n")
    with pytest.raises(ValueError, match=r"dev\.txt:4: a node with 3 children; the N-ary cell"):
        ds.load_sst(tmp_path, max_children=2)
    assert len(ds.load_sst(tmp_path)["dev"]) == 4  # the Child-Sum cell takes any fan-out


def test_sick_bytes_that_are_not_utf8_name_file_and_line(tmp_path):
    """Issue 11, case 6: non-UTF-8 bytes in SICK gave a decode error without the file name."""
    write_sick(tmp_path, n=4)
    path = tmp_path / "train" / "b.toks"
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2] + b" caf\xe9"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match=r"train/b\.toks:3: not valid UTF-8 \(byte 0xe9"):
        ds.read_sick_split(tmp_path / "train")


def test_a_vector_of_the_wrong_length_names_file_and_line(tmp_path):
    """Issue 11, case 6: a 51-number line in a 50-d file silently gave a random vector."""
    path = tmp_path / "vec.txt"
    path.write_text("a 1 2 3\ngood 4 5 6 7\n")
    with pytest.raises(ValueError, match=r"vec\.txt:2: 4 numbers after the word, but the file's"):
        ds.load_vectors(path, ds.Vocab(["a", "good"]))
    path.write_text("a 1 2 3\n. . . 4 5 6\n")  # a word with spaces (glove.840B has a few)
    w, cov = ds.load_vectors(path, ds.Vocab(["a", ". . ."]))
    assert cov.found == 2 and w[2].tolist() == [4, 5, 6]


def test_a_word2vec_header_gives_the_dimension(tmp_path):
    """Issue 11, case 6: a word2vec header line ("COUNT DIM") gave "dim 1"."""
    path = tmp_path / "vec.txt"
    path.write_text("2 3\na 1 2 3\nb 4 5 6\n")
    w, cov = ds.load_vectors(path, ds.Vocab(["a", "b"]))
    assert cov.dim == 3 and cov.found == 2 and w[2].tolist() == [4, 5, 6]


def test_vectors_that_are_not_utf8_name_file_and_line(tmp_path):
    path = tmp_path / "vec.txt"
    path.write_bytes(b"a 1 2\nb\xff 3 4\n")
    with pytest.raises(ValueError, match=r"vec\.txt:2: not valid UTF-8"):
        ds.load_vectors(path, ds.Vocab(["a"]))
    with pytest.raises(ds.DataNotFound, match="--embeddings .*none.txt: no such file"):
        ds.is_uncased(tmp_path / "none.txt")


def test_vocab_round_trips_through_its_dict():
    v = ds.Vocab(["-LRB-", "Good"], lower=True)
    w = ds.Vocab.from_dict(v.to_dict())
    assert w == v and w("GOOD") == v("good") == 2 and w("(") == 1
