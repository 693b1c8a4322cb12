"""treelstm.runtime, piece by piece: checkpoints, atomic writes, the run folder, signals, the
training guard, configs. (The trainers on top of it: test_train, test_dynamic_train,
test_no_run_lost, test_faults.)"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import signal
import time
from dataclasses import dataclass

import pytest
import torch

from treelstm import runtime as rt
from treelstm.runtime import files
from treelstm.runtime.dist import SINGLE

# ----------------------------------------------------------------------------- checkpoints


def _save(path, payload=None, run_id="r1", role="last"):
    payload = payload or {"config": {"a": 1}, "epoch": 2, "model": {"w": torch.arange(6.0)}}
    rt.save_checkpoint(path, payload, trainer="t", role=role, run_id=run_id)


def test_a_checkpoint_round_trips_with_its_header(tmp_path):
    _save(tmp_path / "c.pt")
    doc = rt.load_checkpoint(tmp_path / "c.pt", trainer="t", role="last", run_id="r1",
                             required=("config", "epoch"))  # fmt: skip
    assert doc["version"] == rt.CHECKPOINT_VERSION and doc["format"] == rt.CHECKPOINT_FORMAT
    assert torch.equal(doc["model"]["w"], torch.arange(6.0)) and doc["epoch"] == 2
    assert doc["sha256"] == rt.content_digest(doc)


def test_the_checksum_sees_one_changed_bit_anywhere(tmp_path):
    doc = {"w": torch.arange(6.0), "x": [1, "a", None, 2.5]}
    digest = rt.content_digest(doc)
    flipped = doc["w"].clone()
    flipped.view(torch.int32)[3] ^= 1
    assert rt.content_digest({**doc, "w": flipped}) != digest
    assert rt.content_digest({**doc, "x": [1, "a", None, 2.5000001]}) != digest
    assert rt.content_digest({**doc, "w": doc["w"].double()}) != digest  # dtype counts
    assert rt.content_digest(dict(doc)) == digest


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trainer": "other"}, "belongs to trainer 't'"),
        ({"role": "best"}, "belongs to role 'last'"),
        ({"run_id": "r2"}, "belongs to another run"),
        ({"required": ("vocab",)}, "lacks vocab"),
    ],
)
def test_a_checkpoint_of_another_trainer_role_or_run_is_refused(tmp_path, kwargs, message):
    _save(tmp_path / "c.pt")
    with pytest.raises(rt.CheckpointError, match=message):
        rt.load_checkpoint(tmp_path / "c.pt", **kwargs)


def test_old_foreign_and_missing_checkpoints_are_clear_errors(tmp_path):
    path = tmp_path / "c.pt"
    with pytest.raises(rt.CheckpointError, match="no such checkpoint"):
        rt.load_checkpoint(path)
    torch.save({"format": "treelstm-train-1", "config": {}}, path)
    with pytest.raises(rt.CheckpointError, match="older treelstm .*--overwrite"):
        rt.load_checkpoint(path)
    torch.save({"version": 1, "config": {}}, path)  # dynamic.train's version 1
    with pytest.raises(rt.CheckpointError, match="older treelstm"):
        rt.load_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(rt.CheckpointError, match="not a treelstm checkpoint"):
        rt.load_checkpoint(path)
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(rt.CheckpointError, match="damaged or not a checkpoint"):
        rt.load_checkpoint(path)


def test_a_non_finite_checkpoint_is_never_written(tmp_path):
    _save(tmp_path / "c.pt")
    before = (tmp_path / "c.pt").read_bytes()
    bad = {"model": {"w": torch.tensor([1.0, float("nan"), float("inf")])}, "epoch": 3}
    with pytest.raises(rt.TrainingError, match=r"refusing to write .*model\.w \(2 values\)"):
        _save(tmp_path / "c.pt", bad)
    assert (tmp_path / "c.pt").read_bytes() == before


# ----------------------------------------------------------------------------- atomic writes


def test_a_full_disk_is_one_line_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    files.atomic_write_bytes(path, b"old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", no_space)
    with pytest.raises(rt.FileWriteError) as e:
        files.atomic_write_bytes(path, b"new" * 1000)
    assert str(e.value) == f"could not write {path}: No space left on device (errno 28)"
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["last.pt"]


def test_stale_temporary_files_are_recognised(tmp_path):
    for name in (".best.pt.tmp123", ".metrics.json.tmp9", "keep.txt", ".lock", "x.tmp1"):
        (tmp_path / name).write_text("")
    assert files.remove_stale_temps(tmp_path) == [".best.pt.tmp123", ".metrics.json.tmp9"]
    assert sorted(os.listdir(tmp_path)) == [".lock", "keep.txt", "x.tmp1"]


def test_json_has_no_nan(tmp_path):
    rt.write_json(tmp_path / "m.json", {"a": float("nan"), "b": [1.0, float("inf")]})
    assert rt.read_json(tmp_path / "m.json") == {"a": None, "b": [1.0, None]}


# ----------------------------------------------------------------------------- run folder

CONFIG = {"out": "x", "hidden": 16, "epochs": 2}
RESUMABLE = frozenset({"out", "epochs"})


def _open(path, mode, config=CONFIG, artifacts=("metrics.json", "last.pt")):
    return rt.RunDir.open(path, trainer="t", config=config, resumable=RESUMABLE, mode=mode,
                          artifacts=artifacts, log=lambda *a: None)  # fmt: skip


def test_a_new_run_needs_an_empty_folder(tmp_path):
    d = _open(tmp_path / "run", "new")
    run_id = d.run_id
    d.close()
    (tmp_path / "run" / "last.pt").write_bytes(b"x")
    with pytest.raises(rt.RunDirError, match="already holds a started run .*--resume"):
        _open(tmp_path / "run", "new")
    d = _open(tmp_path / "run", "resume", config={**CONFIG, "epochs": 5})
    assert d.run_id == run_id and d.resumed
    d.close()
    with pytest.raises(rt.RunDirError, match=r"other settings \(hidden: 16 -> 8\)"):
        _open(tmp_path / "run", "resume", config={**CONFIG, "hidden": 8})


def test_overwrite_deletes_the_run_files_only(tmp_path):
    _open(tmp_path, "new").close()
    for name in ("metrics.json", "last.pt", "notes.txt"):
        (tmp_path / name).write_text(name)
    old = rt.read_run_file(tmp_path)["run_id"]
    d = _open(tmp_path, "overwrite")
    d.close()
    assert sorted(os.listdir(tmp_path)) == [".lock", "notes.txt", "run.json"]
    assert rt.read_run_file(tmp_path)["run_id"] == d.run_id != old


def test_resume_refuses_a_folder_of_files_that_are_not_a_run(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"old")
    with pytest.raises(rt.RunDirError, match="not a run of this version"):
        _open(tmp_path, "resume")
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(rt.RunDirError, match=r"run\.json is damaged"):
        _open(tmp_path, "resume")


def test_a_locked_folder_is_refused_naming_the_holder(tmp_path):
    d = _open(tmp_path, "new")
    pid = os.fork()
    if pid == 0:  # another process: the flock is per open file description
        try:
            _open(tmp_path, "resume")
        except rt.RunDirError as e:
            os._exit(0 if f"in use by another run (pid {os.getppid()})" in str(e) else 2)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    d.close()
    _open(tmp_path, "resume").close()  # free again


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(rt.RunDirError, match="is a file, not a folder"):
        _open(tmp_path / "f", "new")


# ----------------------------------------------------------------------------- signals


def test_sigterm_sets_the_flag_and_a_second_one_stops_at_once():
    with rt.StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.requested and stop.code == 143
        with pytest.raises(rt.Interrupted) as e:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)
        assert e.value.code == 143 and "again" in str(e.value)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ----------------------------------------------------------------------------- guard


def test_the_guard_sees_a_non_finite_weight_at_the_next_step():
    w = torch.nn.Parameter(torch.ones(3))
    guard = rt.TrainingGuard([w], lambda: "no checkpoint was written yet", factor=10)
    assert guard.loss_value(torch.tensor(2.0), "step 1") == 2.0 and guard.reference == 2.0
    with torch.no_grad():
        w[1] = float("inf")
    guard.updated()
    with pytest.raises(rt.TrainingError, match="update before step 2 made a weight NaN"):
        guard.loss_value(torch.tensor(1.0), "step 2")
    with pytest.raises(rt.TrainingError, match="loss is nan at step 3.*no checkpoint"):
        rt.TrainingGuard([], lambda: "no checkpoint").loss_value(
            torch.tensor(float("nan")), "step 3"
        )


def test_the_guard_stops_a_diverging_run():
    guard = rt.TrainingGuard([], lambda: "x", factor=10, reference=2.0)
    guard.check_epoch(19.9, "epoch 1")
    with pytest.raises(rt.TrainingError, match=r"diverged: .* 20\.1, more than 10x"):
        guard.check_epoch(20.1, "epoch 2")
    rt.TrainingGuard([], lambda: "x", factor=0, reference=2.0).check_epoch(1e9, "epoch 3")


# ----------------------------------------------------------------------------- config


@dataclass
class _Cfg(rt.RunOptions):
    out: str = "runs/x"  # where it goes
    size: int = 3  # how big
    name: str | None = None  # what it is called
    CHOICES = {"name": ("a", "b")}


def test_the_command_line_comes_from_the_dataclass_and_its_bases():
    p = argparse.ArgumentParser()
    rt.add_config_arguments(p, _Cfg)
    help_of = {a.dest: a.help for a in p._actions}
    assert help_of["size"] == "how big (default: 3)" and help_of["out"].startswith("where it goes")
    assert help_of["overwrite"].startswith("replace the run in --out")
    cfg = rt.parse_config(_Cfg, p, ["--size", "5", "--resume", "--name", "b"])
    assert (cfg.size, cfg.resume, cfg.name, cfg.out) == (5, True, "b", "runs/x")
    with pytest.raises(SystemExit):
        p.parse_args(["--name", "c"])
    assert rt.config_diff(dataclasses.asdict(_Cfg()), dataclasses.asdict(cfg),
                          _Cfg.RESUMABLE) == ["size: 3 -> 5", "name: None -> 'b'"]  # fmt: skip


def test_bad_devices_are_usage_errors():
    assert rt.pick_device("cpu", SINGLE).type == "cpu"
    with pytest.raises(rt.UsageError, match="--device 'tpu'"):
        rt.pick_device("tpu", SINGLE)
    if not torch.cuda.is_available():
        with pytest.raises(rt.UsageError, match="torch sees no CUDA device"):
            rt.pick_device("cuda:1", SINGLE)


def test_a_field_added_later_keeps_old_runs_when_left_at_its_default():
    """A run saved before an option existed resumes when the option keeps its default (which,
    by the house rule, is the old behaviour), and is refused when it is set to something else."""
    saved = dataclasses.asdict(_Cfg())
    del saved["size"]
    defaults = rt.config_defaults(_Cfg)
    current = dataclasses.asdict(_Cfg())
    assert rt.config_diff(saved, current, _Cfg.RESUMABLE, defaults) == []
    current["size"] = 5
    assert rt.config_diff(saved, current, _Cfg.RESUMABLE, defaults) == ["size: '(absent)' -> 5"]
    current["size"] = 3
    assert rt.config_diff(saved, current, _Cfg.RESUMABLE) == ["size: '(absent)' -> 3"]
