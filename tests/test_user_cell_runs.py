"""``python -m treelstm.train --cell module:factory``: a user's cell trains, its run resumes only
with the same cell, and `treelstm.load_model` loads it where the module imports (a clear error
where it does not)."""

from __future__ import annotations

import json
import sys

import pytest

import treelstm
from treelstm import train as tr
from treelstm.runtime import CheckpointError

from .user_cells import OrderedBinaryCell, TreeGRU

pytestmark = pytest.mark.usefixtures("one_thread")


def dry(out, *more):
    return ["sst", "--dry-run", "--out", str(out), "--threads", "1", "--no-progress", *more]


@pytest.mark.parametrize(
    "spec, kind", [("tests.user_cells:TreeGRU", TreeGRU), ("tests.user_cells:OrderedBinaryCell",
                                                          OrderedBinaryCell)]
)  # fmt: skip
def test_a_users_cell_trains_resumes_and_loads(spec, kind, tmp_path, capsys):
    """The run records the spec; load_model rebuilds the same cell and predicts every node;
    --resume with another factory is refused like any other changed setting."""
    assert tr.main(dry(tmp_path, "--cell", spec)) == 0
    config = json.loads((tmp_path / "metrics.json").read_text())["config"]
    assert config["cell"] == spec
    model = treelstm.load_model(tmp_path)
    assert type(model.model.encoder.cell) is kind
    assert model.n_ary == getattr(kind, "n_ary", None)
    [p] = model.predict(["(3 (2 a) (3 (3 gripping) (2 film)))"])
    assert len(p.labels()) == 5
    capsys.readouterr()
    assert tr.main(dry(tmp_path, "--cell", "tests.user_cells:make_gru", "--resume")) == 1
    err = capsys.readouterr().err
    assert f"cell: '{spec}' -> 'tests.user_cells:make_gru'" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nosuchmodule:Cell", "--cell 'nosuchmodule:Cell': cannot import module 'nosuchmodule'"),
        ("tests.user_cells:Nope", "--cell 'tests.user_cells:Nope': tests.user_cells has no 'Nope'"),
        ("tests.user_cells", "--cell tests.user_cells: sst takes nary or childsum"),
        ("tests.user_cells:", "expected one of nary, childsum or 'module:factory'"),
        ("tests.user_cells:no_sizes", "made a Linear: Linear has no attribute 'input_size'"),
    ],
)
def test_a_bad_cell_spec_is_one_line(spec, message, tmp_path, capsys):
    assert tr.main(dry(tmp_path, "--cell", spec)) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "last.pt").exists()


def test_a_run_whose_cell_module_is_gone_is_a_clear_load_error(tmp_path, monkeypatch):
    """load_model needs the user's module: without it, one CheckpointError naming the file,
    the spec and what to do."""
    pkg = tmp_path / "src"
    pkg.mkdir()
    (pkg / "my_cells_for_load.py").write_text("from tests.user_cells import TreeGRU\n")
    monkeypatch.syspath_prepend(str(pkg))
    run = tmp_path / "run"
    assert tr.main(dry(run, "--cell", "my_cells_for_load:TreeGRU")) == 0
    assert type(treelstm.load_model(run).model.encoder.cell) is TreeGRU
    (pkg / "my_cells_for_load.py").unlink()
    monkeypatch.delitem(sys.modules, "my_cells_for_load")
    with pytest.raises(
        CheckpointError,
        match=r"best\.pt: the run's settings cannot be used here: --cell 'my_cells_for_load:"
        r"TreeGRU': cannot import module 'my_cells_for_load' .*PYTHONPATH",
    ):
        treelstm.load_model(run)
