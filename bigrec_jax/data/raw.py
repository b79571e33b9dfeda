"""What every reader returns, and the line-by-line file access that names file:line on errors.

Readers read everything before anything is written, so a bad line stops the run with a message
(`path:line: what is wrong`) and leaves no output behind.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import os
from typing import Iterator

import numpy as np

from bigrec_jax import files
from bigrec_jax.files import UserError


@dataclasses.dataclass
class RawLog:
  """A dataset as read from disk: the catalog and the interaction log in file order.

  `item_index[k]` is the catalog position (the future item_id) of interaction k.
  """
  name: str
  item_raw_ids: list[str]
  titles: list[str]
  user_ids: list[str]
  item_index: np.ndarray  # int64 [n]
  ratings: np.ndarray  # float64 [n]
  timestamps: np.ndarray  # int64 [n]
  sources: dict[str, str]
  dropped: dict[str, int] = dataclasses.field(default_factory=dict)

  @property
  def num_items(self) -> int:
    return len(self.titles)

  @property
  def num_interactions(self) -> int:
    return int(self.item_index.shape[0])

  @property
  def num_users(self) -> int:
    return len(set(self.user_ids))


def require_file(path: str | os.PathLike, what: str) -> str:
  path = os.fspath(path)
  if not path:
    raise UserError(f"no {what} file given")
  files.check_filesystem(path, f"the {what} file")
  if not files.isfile(path):
    raise UserError(f"{path}: {what} file not found")
  return path


@contextlib.contextmanager
def _open_binary(path: str) -> Iterator:
  with files.open_read(path) as raw:
    yield gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw


def numbered_lines(path: str, encoding: str = "utf-8", what: str = "input",
                   final_newline: bool = True) -> Iterator[tuple[int, str]]:
  """(1-based line number, text without the line break) for every non-empty line.

  With `final_newline` (line-delimited records whose last field could be cut anywhere, e.g.
  `94::208::4::891` from a download that stopped early) a last line without a line break is an
  error naming the file and line: such a record cannot be told from a complete one.
  """
  require_file(path, what)
  try:
    with _open_binary(path) as f:
      for lineno, raw in enumerate(f, start=1):
        try:
          text = raw.decode(encoding)
        except UnicodeDecodeError as e:
          raise UserError(f"{path}:{lineno}: not valid {encoding} ({e.reason} at column "
                          f"{e.start + 1}); pass the right encoding") from None
        if final_newline and not raw.endswith(b"\n") and text.strip():
          raise UserError(f"{path}:{lineno}: the last line has no line break, so the file looks "
                          f"cut short inside its last record ({text[-60:]!r}); fetch the file "
                          "again, or end the line with a line break if the record is complete")
        text = text.rstrip("\r\n")
        if text.strip():
          yield lineno, text
  except (OSError, EOFError) as e:  # e.g. a truncated .gz
    raise UserError(f"{path}: cannot be read ({e})") from None


_LATIN = {"iso8859-1", "latin-1", "cp1252", "iso8859-15"}


def utf8_read_as_latin(path: str, encoding: str, texts: list[tuple[int, str]]) -> str | None:
  """A warning when `texts` (line, text) read with a Latin codec look like UTF-8 bytes.

  'MisÃ©rables' is 'Misérables' written in UTF-8 and read as ISO-8859-1; a real ISO-8859-1
  file (the ML-1M/10M originals) has lone high bytes that are not valid UTF-8, so it never
  matches.
  """
  import codecs

  if codecs.lookup(encoding).name not in _LATIN:
    return None
  hits = []
  for lineno, text in texts:
    if text.isascii():
      continue
    try:
      fixed = text.encode(encoding).decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
      continue
    if fixed != text:
      hits.append((lineno, text, fixed))
  if not hits:
    return None
  lineno, text, fixed = hits[0]
  return (f"{path}: {len(hits)} line(s) look like UTF-8 read as {encoding} (line {lineno}: "
          f"{text[:60]!r} would be {fixed[:60]!r}); if the file is UTF-8, pass --encoding=utf-8 "
          "(pipeline: --config.data.encoding=utf-8)")


def parse_int(path: str, lineno: int, field: str, text: str) -> int:
  """Integer (a float with no fraction, as recbole writes timestamps, is accepted)."""
  try:
    return int(text)
  except ValueError:
    pass
  try:
    value = float(text)
  except ValueError:
    raise UserError(f"{path}:{lineno}: {field} {text!r} is not a number") from None
  if not np.isfinite(value) or value != int(value):
    raise UserError(f"{path}:{lineno}: {field} {text!r} is not a whole number")
  return int(value)


def parse_float(path: str, lineno: int, field: str, text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise UserError(f"{path}:{lineno}: {field} {text!r} is not a number") from None
  if not np.isfinite(value):
    raise UserError(f"{path}:{lineno}: {field} {text!r} is not finite")
  return value


def make_log(name: str, item_raw_ids: list[str], titles: list[str], users: list[str],
             items: list[int], ratings: list[float], timestamps: list[int], sources: dict[str, str],
             dropped: dict[str, int] | None = None) -> RawLog:
  if not users:
    raise UserError(f"{', '.join(sources.values())}: no usable interactions")
  return RawLog(name=name, item_raw_ids=item_raw_ids, titles=titles, user_ids=users,
                item_index=np.asarray(items, dtype=np.int64),
                ratings=np.asarray(ratings, dtype=np.float64),
                timestamps=np.asarray(timestamps, dtype=np.int64), sources=sources,
                dropped=dict(dropped or {}))
