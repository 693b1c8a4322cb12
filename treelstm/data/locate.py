"""Where the data lives: ``data_dir``, else ``$TREELSTM_DATA``, else (SST only) the official
Stanford zip downloaded into a cache and checked against the MD5 of its three tree files. A data
directory may be the task folder itself (``.../sst`` holding ``train.txt``) or a folder above it
(``.../data`` holding ``sst/`` and ``sick/``)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

__all__ = [
    "SICK_HOWTO",
    "SST_HOWTO",
    "SST_MD5",
    "SST_URL",
    "DataNotFound",
    "download_sst",
    "find_data",
]

SST_URL = "https://nlp.stanford.edu/sentiment/trainDevTestTrees_PTB.zip"
#: MD5 of the tree files inside the official zip (``trees/*.txt``, entries dated 2013-10-15).
SST_MD5 = {
    "train.txt": "b12d531b1b913a3bb49719ba5cc1f67a",
    "dev.txt": "c405f1d724964e6f72314b5a51fea691",
    "test.txt": "97b75f6ca1ae58b4d52fbf9381dc6f8c",
}

SST_HOWTO = (
    "get the Stanford Sentiment Treebank trees (train.txt, dev.txt, test.txt from "
    f"{SST_URL}, folder trees/) and pass --data-dir or set TREELSTM_DATA to their folder "
    "(or a folder holding sst/); when online the zip is downloaded automatically"
)
SICK_HOWTO = (
    "SICK in the Tree-LSTM layout is not distributed as one official file, so it is not "
    "downloaded: build it with the reference code's preprocessing (github.com/stanfordnlp/"
    "treelstm, scripts/download.py + scripts/preprocess-sick.py: SICK from Marelli et al. "
    "2014, parsed with the Stanford parsers) and pass --data-dir or set TREELSTM_DATA to the "
    "folder holding train/ dev/ test/ (or a folder holding sick/)"
)


class DataNotFound(FileNotFoundError):
    """A data file or folder is missing; the message names the path and how to get the data."""


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "treelstm"


def _task_folder(root: Path, task: str, marker: str) -> Path | None:
    for cand in (root, root / task):
        if (cand / marker).exists():
            return cand
    return None


def find_data(task: str, data_dir=None, *, download: bool = True, cache_dir=None) -> Path:
    """The folder holding ``task``'s files ("sst": train.txt...; "sick": train/ dev/ test/).

    Looks in ``data_dir``, else ``$TREELSTM_DATA``, else (SST, ``download=True``) downloads the
    official zip into ``cache_dir`` (default ``~/.cache/treelstm``). Raises `DataNotFound`
    naming the path tried and how to get the data.
    """
    if task not in ("sst", "sick"):
        raise ValueError(f"unknown task {task!r}: expected 'sst' or 'sick'")
    marker = "train.txt" if task == "sst" else "train"
    howto = SST_HOWTO if task == "sst" else SICK_HOWTO
    where = data_dir if data_dir is not None else os.environ.get("TREELSTM_DATA") or None
    if where is not None:
        root = Path(where)
        found = _task_folder(root, task, marker)
        if found is None:
            raise DataNotFound(
                f"no {task.upper()} data in {root} (looked for {root / marker} and "
                f"{root / task / marker}): {howto}"
            )
        return found
    cache = Path(cache_dir) if cache_dir is not None else _default_cache()
    found = _task_folder(cache, task, marker)
    if found is not None:
        return found
    if task == "sst" and download:
        return download_sst(cache / "sst")
    raise DataNotFound(
        f"no {task.upper()} data: no --data-dir, TREELSTM_DATA is not set and {cache / task} "
        f"does not exist: {howto}"
    )


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_sst(dest, url: str = SST_URL, timeout: float = 30.0) -> Path:
    """Download the official SST zip, check its tree files' MD5 and unpack them into ``dest``.

    Files are written to a temporary folder and moved into place only once all three match.
    Raises `DataNotFound` when the download fails (offline) and ValueError on a bad checksum.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        zpath = Path(tmp) / "sst.zip"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(zpath, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            raise DataNotFound(f"could not download {url} into {dest} ({e}): {SST_HOWTO}") from e
        stage = Path(tmp) / "sst"
        stage.mkdir()
        with zipfile.ZipFile(zpath) as z:
            for name, md5 in SST_MD5.items():
                target = stage / name
                with z.open(f"trees/{name}") as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                got = _md5(target)
                if got != md5:
                    raise ValueError(f"{url}: trees/{name} has MD5 {got}, expected {md5}")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(stage, dest)
    return dest
