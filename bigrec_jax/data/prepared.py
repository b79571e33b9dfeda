"""Reading a prepared-data directory back, with every row checked against the catalog.

Later stages (training, generation, grounding) call `load_prepared` / `read_rows` instead of
`json.load`, so a stale, hand-edited or truncated file fails with the file and row number rather
than a KeyError deep inside a training step.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np

from bigrec_jax import files
from bigrec_jax.data import prompts, sequences, titles as titles_lib
from bigrec_jax.files import UserError

ROW_FIELDS: dict[str, type | tuple[type, ...]] = {
    "instruction": str, "input": str, "output": str, "target_item_id": int,
    "history_item_ids": list, "target_timestamp": int, "user_id": str, "domain": str}


def rows_text(rows: Sequence[dict]) -> str:
  """A JSON list with one row per line (row k is on line k + 2): compact, greppable, quick."""
  if not rows:
    return "[]\n"
  return "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n"


def write_rows(path: str | os.PathLike, rows: Sequence[dict]) -> None:
  files.atomic_write(path, rows_text(rows))


def read_items(directory: str | os.PathLike) -> list[str]:
  """items.tsv -> titles indexed by item_id (ids must be 0..N-1 in order, titles clean)."""
  path = os.path.join(os.fspath(directory), "items.tsv")
  if not files.exists(path):
    raise UserError(f"{path}: file not found (run launch/prepare_data.py first)")
  titles: list[str] = []
  lines = files.read_text(path).split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  for lineno, line in enumerate(lines, start=1):
    item_id, sep, title = line.partition("\t")
    if not sep:
      raise UserError(f"{path}:{lineno}: expected 'item_id<TAB>title', got {line[:80]!r}")
    if item_id != str(len(titles)):
      raise UserError(f"{path}:{lineno}: item ids must be 0, 1, 2, ... in order; "
                      f"expected {len(titles)}, got {item_id!r}")
    problem = titles_lib.title_problem(title)
    if problem:
      raise UserError(f"{path}:{lineno}: {problem}: {title[:80]!r}")
    titles.append(title)
  if not titles:
    raise UserError(f"{path}: empty catalog")
  return titles


def check_row(row: Any, titles: Sequence[str] | None = None) -> str | None:
  """What is wrong with one row, or None."""
  if not isinstance(row, dict):
    return f"expected an object, got {type(row).__name__}"
  for key, kind in ROW_FIELDS.items():
    if key not in row:
      return f"missing {key!r}"
    value = row[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
      return f"{key!r} must be {kind.__name__}, got {type(value).__name__}"
  if row["domain"] not in prompts.DOMAINS:
    return f"unknown domain {row['domain']!r} (expected one of {prompts.DOMAINS})"
  history = row["history_item_ids"]  # may be empty (the reference's game rule)
  if not all(isinstance(i, int) and not isinstance(i, bool) for i in history):
    return "history_item_ids must be integers"
  output = row["output"]
  if len(output) < 2 or output[0] != '"' or output[-1] != '"':
    return f"output must be a quoted title, got {output[:80]!r}"
  problem = titles_lib.title_problem(output[1:-1])
  if problem:
    return f"output: {problem}"
  if titles is not None:
    n = len(titles)
    for item in [row["target_item_id"], *history]:
      if not 0 <= item < n:
        return f"unknown item id {item} (catalog has {n} items)"
    if output != prompts.quote(titles[row["target_item_id"]]):
      return (f"output {output[:80]!r} is not the title of target_item_id "
              f"{row['target_item_id']} ({titles[row['target_item_id']][:80]!r})")
  return None


def read_rows(path: str | os.PathLike, titles: Sequence[str] | None = None) -> list[dict]:
  """A prepared row file, every row validated (against the catalog when `titles` is given)."""
  path = os.fspath(path)
  rows = files.read_json(path)
  if not isinstance(rows, list):
    raise UserError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
  for i, row in enumerate(rows):
    problem = check_row(row, titles)
    if problem:
      raise UserError(f"{path}: row {i} (line {i + 2} as written by prepare): {problem}")
  return rows


def read_popularity(directory: str | os.PathLike, num_items: int) -> np.ndarray:
  path = os.path.join(os.fspath(directory), "popularity.json")
  counts = files.read_json(path)
  if (not isinstance(counts, list) or len(counts) != num_items
      or not all(isinstance(c, int) and c >= 0 for c in counts)):
    raise UserError(f"{path}: expected a list of {num_items} non-negative integers "
                    "(one per item of items.tsv)")
  return np.asarray(counts, dtype=np.int64)


@dataclasses.dataclass
class Prepared:
  """A prepared directory: catalog, training popularity, stats; rows are read per split."""
  directory: str
  titles: list[str]
  popularity: np.ndarray
  stats: dict[str, Any]

  @property
  def num_items(self) -> int:
    return len(self.titles)

  @property
  def domain(self) -> str:
    return self.stats.get("domain", "movie")

  def path(self, split: str) -> str:
    """`train`, `valid`, `test`, `valid_5000`, `test_5000` or any other row file's stem."""
    return os.path.join(self.directory, f"{split}.json")

  def rows(self, split: str) -> list[dict]:
    return read_rows(self.path(split), self.titles)

  def title_groups(self) -> np.ndarray:
    """item id -> smallest id with the same title (duplicate titles count as one target)."""
    return titles_lib.title_group_ids(self.titles)


def load_prepared(directory: str | os.PathLike) -> Prepared:
  directory = os.fspath(directory)
  if not files.isdir(directory):
    raise UserError(f"{directory}: prepared-data directory not found (run launch/prepare_data.py)")
  stats_path = os.path.join(directory, "stats.json")
  if not files.exists(stats_path):
    raise UserError(f"{stats_path}: file not found; the directory is not a finished prepared-data "
                    "directory (interrupted run?): run launch/prepare_data.py again")
  titles = read_items(directory)
  stats = files.read_json(stats_path)
  if not isinstance(stats, dict):
    raise UserError(f"{directory}/stats.json: expected a JSON object")
  return Prepared(directory, titles, read_popularity(directory, len(titles)), stats)


def load_training_rows(directories: Sequence[str], sample: int = -1, seed: int = 0,
                       split: str = "train") -> list[dict]:
  return load_training_set(directories, sample, seed, split)[0]


def load_training_set(directories: Sequence[str], sample: int = -1, seed: int = 0,
                      split: str = "train") -> tuple[list[dict], list[list[str]]]:
  """One training set from one or several prepared datasets (multi-domain): each one's few-shot
  set (reference order), concatenated, and per row its catalog's titles (the row keeps its
  `domain` and the item ids of its own catalog, from which its prompt is rendered)."""
  if not directories:
    raise UserError("no prepared-data directory given")
  rows, catalogs = [], []
  for directory in directories:
    data = load_prepared(directory)
    part = sequences.few_shot(data.rows(split), sample, seed)
    rows.extend(part)
    catalogs.extend([data.titles] * len(part))
  return rows, catalogs
