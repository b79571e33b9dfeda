"""Prepared-data rows -> padded id arrays for the sequential baselines.

The baselines train on exactly the rows the LLM sees (`history_item_ids` -> `target_item_id`
of the prepared data, read and checked by `bigrec_jax.data.prepared`), and the few-shot sample
is the data stage's own `load_training_rows` (shuffle with the run seed, keep the first N), so
their scores line up row by row with the LLM's predictions on valid_5000 / test_5000.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from bigrec_jax.data import prepared as prepared_lib
from bigrec_jax.files import UserError

SPLITS = {"valid": "valid_5000", "test": "test_5000"}  # metrics.json split -> row file stem


@dataclasses.dataclass(frozen=True)
class Sequences:
  """Histories left-padded with `pad_id` (= num_items) to a fixed length, and their targets."""
  histories: np.ndarray  # int32 [rows, max_len]
  targets: np.ndarray  # int32 [rows]

  def __len__(self) -> int:
    return int(self.targets.shape[0])


@dataclasses.dataclass(frozen=True)
class BaselineData:
  num_items: int
  max_len: int
  popularity: np.ndarray  # float32 [num_items], training-split counts
  train: Sequences
  valid: Sequences
  test: Sequences

  @property
  def pad_id(self) -> int:
    return self.num_items

  def split(self, name: str) -> Sequences:
    return {"valid": self.valid, "test": self.test}[name]


def encode_rows(rows: Sequence[dict[str, Any]], num_items: int, max_len: int) -> Sequences:
  """Keeps the last `max_len` history ids of each row, left-padded with num_items.

  Rows come checked by `prepared.read_rows` (ids inside the catalog). An empty history
  (the game rule's single-review users) is a row of padding only.
  """
  histories = np.full((len(rows), max_len), num_items, dtype=np.int32)
  targets = np.empty((len(rows),), dtype=np.int32)
  for i, row in enumerate(rows):
    kept = row["history_item_ids"][-max_len:]
    histories[i, max_len - len(kept):] = kept
    targets[i] = row["target_item_id"]
  return Sequences(histories, targets)


def load(data_dir: str, *, max_len: int, sample: int = -1, seed: int = 0) -> BaselineData:
  """A prepared dir as arrays; `sample` >= 0 keeps the LLM run's few-shot rows (same seed)."""
  if max_len < 1:
    raise UserError(f"config.max_len must be >= 1, got {max_len}")
  if sample == 0 or sample < -1:
    raise UserError(f"--sample={sample}: use a positive number of training rows, or -1 for all")
  prepared = prepared_lib.load_prepared(data_dir)
  train_rows = prepared_lib.load_training_rows([data_dir], sample, seed)
  if not train_rows:
    raise UserError(f"{prepared.path('train')}: no training rows")
  evals = {}
  for name, stem in SPLITS.items():
    rows = prepared.rows(stem)
    if not rows:
      raise UserError(f"{prepared.path(stem)}: no rows to evaluate")
    evals[name] = encode_rows(rows, prepared.num_items, max_len)
  return BaselineData(
      num_items=prepared.num_items, max_len=max_len,
      popularity=prepared.popularity.astype(np.float32),
      train=encode_rows(train_rows, prepared.num_items, max_len), **evals)
