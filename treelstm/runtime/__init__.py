"""What every trainer shares (`treelstm.train`, `dynamic.train`): one implementation each of

- configs -> command lines, and what may change on --resume (`config`),
- the run folder: lock, ownership, new / --resume / --overwrite (`rundir`),
- checkpoints: versioned, checksummed, never non-finite (`checkpoint`),
- atomic file writes with one-line errors (`files`),
- SIGINT / SIGTERM: save, then stop (`signals`),
- non-finite and diverging losses (`guard`),
- torchrun / DistributedDataParallel helpers (`dist`),
- training curves (`plots`), fault injection for the tests (`faults`),

tied together per run by `Session`, with `cli_main` for the command lines. What a run
guarantees is written in the README ("Runs: resume, interrupts and faults").
"""

from . import dist, faults
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    content_digest,
    load_checkpoint,
    save_checkpoint,
)
from .config import (
    RunOptions,
    add_config_arguments,
    config_defaults,
    config_diff,
    config_from_args,
    parse_config,
    pick_device,
    require_positive,
)
from .errors import (
    CheckpointError,
    FileWriteError,
    Interrupted,
    RunDirError,
    RunDirLocked,
    RunError,
    TrainingError,
    UsageError,
    one_line,
)
from .files import atomic_write, atomic_write_bytes, read_json, write_json
from .guard import TrainingGuard, all_finite
from .plots import curves_figure
from .rundir import RUN_FILE, RunDir, read_run_file
from .session import Session, cli_main
from .signals import StopSignals

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "RUN_FILE",
    "CheckpointError",
    "FileWriteError",
    "Interrupted",
    "RunDir",
    "RunDirError",
    "RunDirLocked",
    "RunError",
    "RunOptions",
    "Session",
    "StopSignals",
    "TrainingError",
    "TrainingGuard",
    "UsageError",
    "add_config_arguments",
    "all_finite",
    "atomic_write",
    "atomic_write_bytes",
    "cli_main",
    "config_defaults",
    "config_diff",
    "config_from_args",
    "content_digest",
    "curves_figure",
    "dist",
    "faults",
    "load_checkpoint",
    "one_line",
    "parse_config",
    "pick_device",
    "read_json",
    "read_run_file",
    "require_positive",
    "save_checkpoint",
    "write_json",
]
