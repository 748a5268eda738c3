"""Small shared helpers: device choice, seeding, atomic file writes, hashing, worker pools.

Everything that touches the file system for results goes through the atomic writers here, so a
killed process never leaves a half-written file behind: data is written to a temporary file in the
same folder, flushed to disk, then renamed over the target (a rename is atomic on POSIX).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _default_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_file_mode()


class LoopWMError(Exception):
    """Base class for errors a user can act on; the message says what is wrong and how to fix it."""


def pick_device(requested: str = "auto", local_rank: int | None = None) -> "torch.device":  # noqa: F821 - torch imported lazily
    """The one place that chooses a device: "auto" gives the machine's accelerator (CUDA, or any
    other torch knows) when present, else CPU; no device type is named here. With `local_rank` (one
    process of several on a machine), an accelerator device becomes that process's own, made
    current; a CPU device is shared."""
    import torch

    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if requested == "auto":
        device = accelerator or torch.device("cpu")
    else:
        try:
            device = torch.device(requested)
        except RuntimeError as err:
            raise LoopWMError(f"unknown device {requested!r}: use 'auto', 'cpu', or an "
                              "accelerator device as torch names it (type[:index])") from err
        if device.type not in ("cpu", "meta") and (accelerator is None or device.type != accelerator.type):
            raise LoopWMError(f"device {requested!r} asked for, but this machine has "
                              f"{'no accelerator' if accelerator is None else accelerator.type}: use --device cpu or auto")
    if local_rank is not None and device.type != "cpu":
        device = torch.device(device.type, local_rank)
        torch.accelerator.set_device_index(local_rank)
    return device


def accelerator_build() -> str | None:
    """The accelerator toolkit this torch was built for (e.g. "CUDA 12.8", "ROCm 6.4"), or None for a
    CPU build: what `loopwm doctor` says when `pick_device` finds no accelerator."""
    import torch

    for toolkit, version in (("CUDA", torch.version.cuda), ("ROCm", getattr(torch.version, "hip", None))):
        if version:
            return f"{toolkit} {version}"
    return None


def device_label(device) -> str:
    """What a device is, for records: "cpu", or the accelerator's index and name (e.g. "<type>:0
    (NVIDIA H200)"), asked of the device's own torch module so that no device type is named here."""
    import torch

    device = torch.device(device)
    if device.type == "cpu":
        return "cpu"
    try:
        backend = torch.get_device_module(device)
    except RuntimeError:  # a device type without a torch module of its own
        return str(device)
    index = device.index if device.index is not None else getattr(backend, "current_device", lambda: 0)()
    label = str(torch.device(device.type, index))
    name = getattr(backend, "get_device_name", None)  # not every backend can name its device
    return f"{label} ({name(index)})" if name else label


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every accelerator) from one integer."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes owner-only files; results are for sharing
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save(path: str | os.PathLike, writer) -> None:
    """Atomic write for libraries that want a file name: `writer(tmp_path)` fills a temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read JSON with an error that names the file instead of a bare decoder traceback."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as err:
        raise LoopWMError(f"{what} not found: {path}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LoopWMError(f"{what} {path} is not valid JSON ({err}); it is corrupt or not a loopwm file") from err


def worker_pool(workers: int, initializer=None, initargs: tuple = ()) -> "concurrent.futures.ProcessPoolExecutor":  # noqa: F821
    """A pool of `workers` spawned processes that end themselves when the process that started them
    dies. Spawn, not fork: a forked child inherits the parent's torch thread-pool state. The watch
    matters for long jobs: a pool worker outlives a killed parent until its current task ends, and
    in a study that task is an hour of training on a core nobody is reading."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_start_worker,
                               initargs=(os.getpid(), initializer, initargs))


def _start_worker(parent: int, initializer, initargs: tuple) -> None:
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:  # re-parented (to init or a subreaper) once the parent is gone
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="loopwm-orphan-watch").start()
    if initializer is not None:
        initializer(*initargs)
