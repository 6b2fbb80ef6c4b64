"""Safe files for the study runner: atomic writes, per-run locks, checksummed results and checkpoints.

Guarantees (docs/studies.md, "What the runner guarantees"):

* every JSON file and checkpoint is written to a unique temporary name in its directory, flushed with
  ``fsync`` and renamed over the target (readers see the old file or the new one, never a part);
* a run is trained under an exclusive ``fcntl`` lock on ``runs/locks/KEY.lock``, so two processes
  sharing a runs directory never train one run twice; the lock dies with its process;
* a result file and a checkpoint carry their run key and the SHA-256 of their contents; a file that
  fails the check is moved to ``runs/quarantine`` (never deleted) and the run recomputed, or, with
  ``strict``, reported as an error;
* checkpoints hold plain types and tensors only and load with ``torch.load(weights_only=True)``;
* OS errors (disk full, permission denied) are reported with the path they concern.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

RESULT_FORMAT = 1
CHECKPOINT_MAGIC = b"LPSGLD-CHECKPOINT 1\n"
MARKER = ".lpsgld-study"  # written by the runner in every study directory it creates


class CorruptFile(ValueError):
    """A result or checkpoint that fails its integrity check (``path`` names it)."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path}: {why}")
        self.path = path


def path_error(e: OSError, path: Path | str, doing: str) -> OSError:
    """``e`` re-raised with the path and a plain reason (disk full, permission denied)."""
    why = {errno.ENOSPC: "no space left on the device", errno.EACCES: "permission denied",
           errno.EROFS: "read-only file system", errno.EDQUOT: "disk quota exceeded"}.get(e.errno or 0,
                                                                                        e.strerror or str(e))
    return OSError(e.errno, f"cannot {doing} {path}: {why}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` by unique temp file + fsync + rename (+ directory fsync)."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from the others sharing a runs directory
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        raise path_error(e, path, "write") from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def json_text(obj: Any, indent: int | None = 1) -> str:
    """JSON with NaN and Infinity refused (they are not JSON); callers store them as null."""
    return json.dumps(obj, indent=indent, allow_nan=False)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json_text(obj).encode())


def finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# ---- per-run locks -----------------------------------------------------------------------------


@contextlib.contextmanager
def run_lock(runs: Path, key: str, *, wait: bool) -> Iterator[bool]:
    """Hold the exclusive lock of run ``key``; yields False (without waiting) when another process holds it."""
    d = Path(runs) / "locks"
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise path_error(e, d / f"{key}.lock", "create the lock file") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


# ---- checksummed run results -------------------------------------------------------------------


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, allow_nan=False).encode()).hexdigest()


def seal_result(res: dict[str, Any], key: str) -> dict[str, Any]:
    """``res`` with ``integrity``: the run key, the format and the SHA-256 of everything else."""
    body = {k: v for k, v in res.items() if k != "integrity"}
    return {**body, "integrity": {"key": key, "format": RESULT_FORMAT, "sha256": _digest(body)}}


def read_result(path: Path, key: str) -> dict[str, Any]:
    """The checked result of run ``key`` at ``path``; :class:`CorruptFile` when it is not that run's intact result."""
    try:
        text = path.read_text()
    except OSError as e:
        raise path_error(e, path, "read") from e
    except UnicodeDecodeError:
        raise CorruptFile(path, "not UTF-8 text") from None
    try:
        res = json.loads(text)
    except json.JSONDecodeError as e:
        raise CorruptFile(path, f"not valid JSON ({e})") from None
    if not isinstance(res, dict) or not isinstance(res.get("integrity"), dict):
        raise CorruptFile(path, "no integrity record (not written by this runner, or damaged)")
    integ = res["integrity"]
    if integ.get("key") != key:
        raise CorruptFile(path, f"holds run {integ.get('key')!r}, expected {key!r}")
    if integ.get("format") != RESULT_FORMAT:
        raise CorruptFile(path, f"result format {integ.get('format')!r}, expected {RESULT_FORMAT}")
    body = {k: v for k, v in res.items() if k != "integrity"}
    if integ.get("sha256") != _digest(body):
        raise CorruptFile(path, "checksum mismatch: the contents were changed after writing")
    return res


def quarantine(path: Path, runs: Path) -> Path:
    """Move ``path`` into ``runs/quarantine`` under a unique name; returns the new path."""
    q = Path(runs) / "quarantine"
    q.mkdir(parents=True, exist_ok=True)
    dest = q / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}"
    try:
        os.replace(path, dest)
    except FileNotFoundError:  # another process moved it first
        return dest
    except OSError as e:
        raise path_error(e, path, "quarantine") from e
    return dest


# ---- checkpoints: plain types and tensors, checksummed -----------------------------------------


def _plain(obj: Any) -> Any:
    """Numpy arrays as tagged int64/float tensors; every other leaf must be a plain type or a tensor."""
    import torch

    if isinstance(obj, np.ndarray):
        dtype = str(obj.dtype)
        a = obj.view(np.int64) if obj.dtype == np.uint64 else obj
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(a)).clone(), "dtype": dtype}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    raise TypeError(f"a checkpoint holds plain types and tensors only, got {type(obj).__name__}")


def _unplain(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__", "dtype"}:
            a = obj["__ndarray__"].numpy()
            return a.view(np.uint64) if obj["dtype"] == "uint64" else a.astype(obj["dtype"], copy=False)
        return {k: _unplain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unplain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_unplain(v) for v in obj)
    return obj


def save_checkpoint(path: Path, key: str, state: dict[str, Any]) -> None:
    """``state`` (plain types, tensors, numpy arrays) under a header with the run key and a checksum."""
    import torch

    buf = io.BytesIO()
    torch.save(_plain(state), buf)
    payload = buf.getvalue()
    header = json.dumps({"key": key, "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)})
    atomic_write_bytes(path, CHECKPOINT_MAGIC + header.encode() + b"\n" + payload)


def load_checkpoint(path: Path, key: str, map_location: Any = "cpu") -> dict[str, Any]:
    """The state saved by :func:`save_checkpoint` for run ``key``; :class:`CorruptFile` otherwise.

    The payload loads with ``weights_only=True``: a pickled object is refused, never executed.
    """
    import pickle

    import torch

    try:
        data = path.read_bytes()
    except OSError as e:
        raise path_error(e, path, "read") from e
    if not data.startswith(CHECKPOINT_MAGIC):
        raise CorruptFile(path, "not a checkpoint of this runner (bad header)")
    head, sep, payload = data[len(CHECKPOINT_MAGIC):].partition(b"\n")
    try:
        meta = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CorruptFile(path, "damaged checkpoint header") from None
    if not sep or not isinstance(meta, dict):
        raise CorruptFile(path, "damaged checkpoint header")
    if meta.get("key") != key:
        raise CorruptFile(path, f"checkpoint of run {meta.get('key')!r}, expected {key!r}")
    if meta.get("bytes") != len(payload):
        raise CorruptFile(path, f"truncated: {len(payload)} of {meta.get('bytes')} payload bytes")
    if meta.get("sha256") != hashlib.sha256(payload).hexdigest():
        raise CorruptFile(path, "checksum mismatch: the checkpoint was changed after writing")
    try:
        state = torch.load(io.BytesIO(payload), weights_only=True, map_location=map_location)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise CorruptFile(path, f"refused: not plain types and tensors ({str(e).splitlines()[0]})") from None
    return dict(_unplain(state))


# ---- study directories --------------------------------------------------------------------------


def check_fresh_target(root: Path) -> None:
    """Raise ValueError unless ``root`` may be emptied by ``--fresh``: a study directory (marker file,
    or the ``plan.json`` of a study written before the marker existed) that is neither the working
    directory nor one of its parents."""
    r = Path(root).resolve()
    cwd = Path.cwd().resolve()
    if r == cwd or r in cwd.parents:
        raise ValueError(f"--fresh refuses to delete {str(root)!r}: it is the working directory or one of its parents")
    if not r.exists() or (r / MARKER).is_file():
        return
    try:
        plan = json.loads((r / "plan.json").read_text())
    except (OSError, ValueError):
        plan = None
    if not (isinstance(plan, dict) and "name" in plan and "methods" in plan):
        raise ValueError(f"--fresh refuses to delete {str(root)!r}: it is not a study directory written by lpsgld "
                         f"train (no {MARKER} marker, no plan.json); remove it yourself or choose another --out")


def json_safe(x: Any) -> Any:
    """``x`` with non-finite floats as null (JSON has no NaN or Infinity) and Fractions as
    ``{"num", "den", "float"}``, through dicts, lists and tuples."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Fraction):
        return {"num": x.numerator, "den": x.denominator, "float": float(x)}
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x
