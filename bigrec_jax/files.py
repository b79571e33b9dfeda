"""The one place that writes files and reports bad input.

Every output of every stage goes through `atomic_write` (temp name, fsync, rename), so a
reader never sees half a file. `UserError` is the one exception type that launchers turn into a
clear message and exit status 2 instead of a traceback.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator

import numpy as np


_UMASK = os.umask(0)
os.umask(_UMASK)


class UserError(Exception):
  """Bad input, flag or config: the message names the file/line/flag and says what to do."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path next to `path`; renames it onto `path` only on success."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  os.close(fd)
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
  mode = "wb" if isinstance(data, bytes) else "w"
  with atomic_path(path) as tmp:
    with open(tmp, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
      f.write(data)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
  atomic_write(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.save(f, np.asarray(array))


def read_json(path: str | os.PathLike) -> Any:
  """Reads JSON; a missing file, bad UTF-8 or broken JSON becomes a UserError naming the line."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise UserError(f"{path}: file not found")
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except UnicodeDecodeError as e:
    line = text_line_of_byte(path, e.start)
    raise UserError(f"{path}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None


def read_npy(path: str | os.PathLike, *, ndim: int | None = None, finite: bool = True) -> np.ndarray:
  """Loads a .npy file, rejecting a wrong rank or non-finite values with the file and row."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise UserError(f"{path}: file not found")
  try:
    array = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise UserError(f"{path}: not a readable .npy array ({e})") from None
  if ndim is not None and array.ndim != ndim:
    raise UserError(f"{path}: expected a {ndim}-d array, got shape {array.shape}")
  if finite and array.dtype.kind == "f" and not np.isfinite(array).all():
    bad = np.argwhere(~np.isfinite(array))[0]
    raise UserError(f"{path}: non-finite value (NaN/inf) at row {int(bad[0])}")
  return array


def text_line_of_byte(path: str, offset: int) -> int:
  with open(path, "rb") as f:
    return f.read(offset).count(b"\n") + 1


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
  import hashlib

  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()
