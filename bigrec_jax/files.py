"""The one place that reads, writes and checks files, and reports bad input.

Every path is a string: a local path or a URI (`gs://bucket/dir`, `s3://`, `az://`, `hf://`)
that `etils.epath` resolves to its filesystem. Every reader and writer of the package goes
through the helpers below (`exists`, `listdir`, `open_read`, `read_json`, `local_copy`, ...), so
a remote workdir reaches the bucket instead of a local directory named `gs:`;
`check_filesystem` refuses, before any work, a URI whose filesystem backend is not installed.

Every output of every stage goes through `atomic_path` / `atomic_write`, so a reader never sees
half a file:
  - local paths: a temporary file beside the target, fsync, then rename(2) onto it, which POSIX
    makes atomic (the old file or the new one, never a mix);
  - object stores (gs://, s3://, az://): the bytes go to a local temporary file, are uploaded
    as a temporary object beside the target, then renamed onto it. An object store makes each
    object visible only once its upload is complete, and its rename is a server-side copy then a
    delete, so a reader sees the old object or the whole new one; what is not atomic there is
    the pair (a crash between copy and delete can leave the `.tmp` object behind, never a
    partial target). Directories are only name prefixes on an object store: `makedirs` creates
    nothing there, and a "directory" exists once it holds an object.
`UserError` is the one exception type that launchers turn into a clear message and exit status
2 instead of a traceback.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import tempfile
import uuid
from typing import IO, Any, Iterator

import numpy as np
from etils import epath


_UMASK = os.umask(0)
os.umask(_UMASK)


class UserError(Exception):
  """Bad input, flag or config: the message names the file/line/flag and says what to do."""


# ----------------------------------------------------------------------------- the path layer

# URI scheme -> (the fsspec protocol epath asks for, the package that provides it).
REMOTE_FILESYSTEMS = {"gs": ("gcs", "gcsfs"), "s3": ("s3", "s3fs"), "az": ("az", "adlfs"),
                      "hf": ("hf", "huggingface_hub")}


def scheme(path: str | os.PathLike) -> str | None:
  """'gs' for 'gs://bucket/x'; None for a local path."""
  text = os.fspath(path)
  return text.split("://", 1)[0] if "://" in text else None


def is_remote(path: str | os.PathLike) -> bool:
  return scheme(path) is not None


def _epath_uses_tensorflow() -> bool:
  # epath's own rule (etils.epath.gpath): with TensorFlow importable and EPATH_USE_TF not set to
  # false, every URI goes through tf.io.gfile instead of fsspec.
  if os.environ.get("EPATH_USE_TF", "").lower() in ("false", "no", "f", "0"):
    return False
  return importlib.util.find_spec("tensorflow") is not None


def check_filesystem(path: str | os.PathLike, what: str = "path") -> None:
  """A UserError, before any work, when `path` is a URI this process cannot reach.

  `what` names the flag or field (e.g. '--workdir'). A local path always passes.
  """
  name = scheme(path)
  if name is None:
    return
  if name not in REMOTE_FILESYSTEMS:
    raise UserError(f"{what}={path}: {name}:// is not a filesystem this project can use; give a "
                    "local path or a gs://, s3://, az:// or hf:// URI")
  protocol, package = REMOTE_FILESYSTEMS[name]
  if _epath_uses_tensorflow():
    if name == "gs":
      return  # tf.io.gfile reaches GCS itself
    raise UserError(f"{what}={path}: TensorFlow is installed, so etils.epath sends {name}:// "
                    f"through tf.io.gfile, which reaches only gs://; run with EPATH_USE_TF=false "
                    f"and `pip install {package}`")
  import fsspec

  try:
    fsspec.get_filesystem_class(protocol)
  except (ImportError, ValueError):
    also = " (or TensorFlow, whose tf.io.gfile etils.epath then uses)" if name == "gs" else ""
    raise UserError(f"{what}={path}: reading and writing {name}:// needs the {package} package, "
                    f"which is not installed: `pip install {package}`{also}") from None


def path(p: str | os.PathLike) -> epath.Path:
  """The epath object for a local path or a URI."""
  return epath.Path(os.fspath(p))


def abspath(p: str | os.PathLike) -> str:
  """os.path.abspath for a local path; a URI is already absolute (abspath would make ./gs:/...)."""
  p = os.fspath(p)
  return p if is_remote(p) else os.path.abspath(p)


def exists(p: str | os.PathLike) -> bool:
  return path(p).exists()


def isdir(p: str | os.PathLike) -> bool:
  return path(p).is_dir()


def isfile(p: str | os.PathLike) -> bool:
  return path(p).is_file()


def size_and_mtime(p: str | os.PathLike) -> tuple[int, int]:
  """(bytes, modification time) of a file, for cache keys that must notice a changed input:
  nanoseconds locally, the store's whole seconds for a URI."""
  if is_remote(p):
    st = path(p).stat()
    return int(st.length), int(st.mtime)
  st = os.stat(p)
  return st.st_size, st.st_mtime_ns


def listdir(p: str | os.PathLike) -> list[str]:
  """The names (not paths) in directory `p`, sorted."""
  return sorted(child.name for child in path(p).iterdir())


def glob(directory: str | os.PathLike, pattern: str) -> list[str]:
  """Paths in `directory` matching the one-level `pattern` (e.g. 'events.*'), sorted."""
  return sorted(os.fspath(p) for p in path(directory).glob(pattern))


def makedirs(p: str | os.PathLike) -> None:
  path(p).mkdir(parents=True, exist_ok=True)


def remove(p: str | os.PathLike) -> None:
  """Deletes the file `p` if it exists."""
  path(p).unlink(missing_ok=True)


def rmtree(p: str | os.PathLike) -> None:
  """Deletes the directory `p` and everything below it, if it exists."""
  target = path(p)
  if target.exists():
    target.rmtree(missing_ok=True)


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Moves the file or directory `src` to the new name `dst`: a rename locally, object by object
  (copy, then delete) on an object store."""
  if not is_remote(src) and not is_remote(dst):
    os.replace(src, dst)
    return
  source = path(src)
  if not source.is_dir():
    source.replace(os.fspath(dst))
    return
  for relative, child in _files_below(source):
    target = path(dst) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    child.replace(os.fspath(target))
  source.rmtree(missing_ok=True)


def _files_below(directory: epath.Path, prefix: str = "") -> Iterator[tuple[str, epath.Path]]:
  """(path relative to `directory`, file) for every file below it. epath's own walk() drops the
  gs:// of the paths it yields on the fsspec backend, so this recurses with iterdir()."""
  for child in sorted(directory.iterdir(), key=lambda c: c.name):
    relative = f"{prefix}{child.name}"
    if child.is_dir():
      yield from _files_below(child, relative + "/")
    else:
      yield relative, child


def open_read(p: str | os.PathLike, binary: bool = True) -> IO:
  """A file object for reading `p` (text mode decodes UTF-8)."""
  return path(p).open("rb" if binary else "r", encoding=None if binary else "utf-8")


def read_bytes(p: str | os.PathLike) -> bytes:
  with open_read(p) as f:
    return f.read()


def read_text(p: str | os.PathLike) -> str:
  """The UTF-8 text of `p`; bad UTF-8 is a UserError naming the line."""
  data = read_bytes(p)
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    raise UserError(f"{p}:{line}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


@contextlib.contextmanager
def local_copy(p: str | os.PathLike, skip: tuple[str, ...] = ()) -> Iterator[str]:
  """A local path holding the file or directory `p`, for libraries that need one (safetensors,
  tokenizers, np.load mmaps): `p` itself when local, else a temporary download removed on exit
  (leaving out a directory's files whose names end with one of `skip`, e.g. weights)."""
  p = os.fspath(p)
  if not is_remote(p):
    yield p
    return
  source = path(p)
  with tempfile.TemporaryDirectory(prefix="bigrec_download_") as tmp:
    local = os.path.join(tmp, source.name or "root")
    if source.is_dir():
      os.makedirs(local)
      for relative, child in _files_below(source):
        if skip and relative.endswith(skip):
          continue
        target = os.path.join(local, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with child.open("rb") as src, open(target, "wb") as dst:
          shutil.copyfileobj(src, dst, 1 << 24)
    else:
      with source.open("rb") as src, open(local, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 24)
    yield local


# ----------------------------------------------------------------------------- writers


def _upload(local: str, target: str) -> None:
  """Copies the local file onto the URI `target` as a temporary object, then renames it there."""
  destination = path(target)
  destination.parent.mkdir(parents=True, exist_ok=True)
  staged = destination.parent / f".{destination.name}.{uuid.uuid4().hex}.tmp"
  try:
    with open(local, "rb") as src, staged.open("wb") as dst:
      shutil.copyfileobj(src, dst, 1 << 24)
    staged.replace(target)
  except BaseException:
    staged.unlink(missing_ok=True)  # no stray .tmp object from a failed upload
    raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary local path; on success it replaces `path` (local or URI) atomically."""
  path = os.fspath(path)
  if is_remote(path):
    with tempfile.TemporaryDirectory(prefix="bigrec_upload_") as tmp_dir:
      local = os.path.join(tmp_dir, os.path.basename(path) or "file")
      yield local
      _upload(local, path)
    return
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


@contextlib.contextmanager
def local_staging(directory: str | os.PathLike) -> Iterator[str]:
  """A fresh local directory for a library that writes files itself (a tokenizer's
  save_pretrained); on success every file in it is written into `directory` (local or URI), each
  through `atomic_path`."""
  with tempfile.TemporaryDirectory(prefix="bigrec_staging_") as local:
    yield local
    for root, _, names in os.walk(local):
      for name in names:
        source = os.path.join(root, name)
        relative = os.path.relpath(source, local)
        with atomic_path(os.path.join(os.fspath(directory), relative)) as tmp:
          shutil.copyfile(source, tmp)


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


# ----------------------------------------------------------------------------- readers


def read_json(path: str | os.PathLike) -> Any:
  """Reads JSON; a missing file, bad UTF-8 or broken JSON becomes a UserError naming the line."""
  path = os.fspath(path)
  if not exists(path):
    raise UserError(f"{path}: file not found")
  text = read_text(path)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None


def read_npy(path: str | os.PathLike, *, ndim: int | None = None, finite: bool = True) -> np.ndarray:
  """Loads a .npy file, rejecting a wrong rank or non-finite values with the file and row."""
  path = os.fspath(path)
  if not exists(path):
    raise UserError(f"{path}: file not found")
  try:
    array = np.load(path if not is_remote(path) else io.BytesIO(read_bytes(path)),
                    allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise UserError(f"{path}: not a readable .npy array ({e})") from None
  if ndim is not None and array.ndim != ndim:
    raise UserError(f"{path}: expected a {ndim}-d array, got shape {array.shape}")
  if finite and array.dtype.kind == "f" and not np.isfinite(array).all():
    bad = np.argwhere(~np.isfinite(array))[0]
    raise UserError(f"{path}: non-finite value (NaN/inf) at row {int(bad[0])}")
  return array


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}


def _npy_header(f: IO) -> tuple[tuple[int, ...], np.dtype]:
  """(shape, dtype) of the C-order .npy array whose file `f` is at its start; leaves `f` at the
  first data byte."""
  version = np.lib.format.read_magic(f)
  if version not in _NPY_HEADER_READERS:
    raise ValueError(f".npy format version {version} (expected 1.0 or 2.0, as np.save writes)")
  shape, fortran_order, dtype = _NPY_HEADER_READERS[version](f)
  if fortran_order:
    raise ValueError("a Fortran-order .npy array (expected C order, as np.save writes)")
  return shape, dtype


def npy_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype]:
  """(shape, dtype) of a .npy file, reading only its header (local or URI)."""
  with open_read(path) as f:
    return _npy_header(f)


def npy_rows(path: str | os.PathLike, lo: int, hi: int) -> np.ndarray:
  """Rows [lo, hi) of a C-order .npy array, a copy, without reading the rest of the file: a
  short-lived np.load mmap locally (bounded memory), ranged reads on an object store."""
  path = os.fspath(path)
  if not is_remote(path):
    view = np.load(path, mmap_mode="r")
    rows = np.array(view[lo:hi])
    del view
    return rows
  with open_read(path) as f:
    shape, dtype = _npy_header(f)
    hi = min(hi, shape[0])
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    f.seek(f.tell() + lo * row_bytes)
    data = f.read(max(hi - lo, 0) * row_bytes)
  return np.frombuffer(data, dtype=dtype).reshape((max(hi - lo, 0),) + tuple(shape[1:])).copy()


def text_line_of_byte(path: str, offset: int) -> int:
  with open_read(path) as f:
    return f.read(offset).count(b"\n") + 1


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
  import hashlib

  h = hashlib.sha256()
  with open_read(path) as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()
