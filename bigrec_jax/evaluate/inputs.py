"""Reading what evaluation consumes, with a UserError naming the file and row for every bad input.

Everything is read and checked before anything is computed or written, so bad input never leaves
a partial metrics.json behind.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from bigrec_jax.data import prepared, prompts
from bigrec_jax.data import titles as titles_lib
from bigrec_jax import files
from bigrec_jax.files import UserError, read_json, read_npy


def clean_text(text: str) -> str:
  """REFERENCE.md: titles and predictions lose surrounding spaces and double quotes before embedding."""
  return prompts.unquote(text)


@dataclasses.dataclass(frozen=True)
class Catalog:
  """items.tsv: titles by item id (0..N-1) and the ids that share each cleaned title."""
  path: str
  titles: list[str]
  ids_by_title: dict[str, list[int]]

  @property
  def num_items(self) -> int:
    return len(self.titles)

  def same_title(self, item_id: int) -> list[int]:
    return self.ids_by_title[clean_text(self.titles[item_id])]


def read_catalog(prepared_dir: str) -> Catalog:
  """The prepared catalog (data.prepared checks it), grouped by cleaned title."""
  titles = prepared.read_items(prepared_dir)
  return Catalog(os.path.join(prepared_dir, "items.tsv"), titles,
                 titles_lib.ids_by_title(titles, key=clean_text))


def read_popularity(prepared_dir: str, num_items: int) -> np.ndarray:
  """popularity.json: training-split interaction counts per item id."""
  return prepared.read_popularity(prepared_dir, num_items)


@dataclasses.dataclass
class Predictions:
  """One prediction file: the text(s) to ground per row and the row's target ids."""
  path: str
  texts: list[str]  # cleaned predict[beam] (with several beams: predict[0]); '' when empty
  target_ids: np.ndarray  # [Q] the row's own target id
  targets: np.ndarray  # [Q, M] all ids sharing the target's title, padded with -1
  empty: np.ndarray  # [Q] bool: no usable prediction (never a hit)
  rows: list[dict]
  beam_texts: list[list[str]] | None = None  # beams > 1: cleaned predict[0..beams-1], '' missing

  @property
  def beams(self) -> int:
    return 1 if self.beam_texts is None else len(self.beam_texts[0])

  def beam_present(self) -> np.ndarray:
    """[Q, beams] bool: which beams have a usable (non-empty) prediction."""
    if self.beam_texts is None:
      return ~self.empty[:, None]
    return np.asarray([[bool(t) for t in row] for row in self.beam_texts], bool)

  @property
  def num_rows(self) -> int:
    return len(self.texts)


def read_predictions(path: str, catalog: Catalog, beam: int = 0, beams: int = 1) -> Predictions:
  """Rows {"predict": [str] | str, "target_item_id": int (or "output": '"Title"'), ...}.

  beams=1 grounds predict[beam]; beams > 1 (with beam 0) grounds predict[0..beams-1] together
  (ground/kernel.py: per-beam min-max distances weighted by beam rank). Rows with fewer
  predictions use the ones they have; a row is empty when none of its beams is usable.
  """
  rows = read_json(path)
  if not isinstance(rows, list) or not rows:
    raise UserError(f"{path}: expected a non-empty JSON list of prediction rows")
  return predictions_from_rows(rows, catalog, beam, beams, path=path)


def predictions_from_rows(rows: list, catalog: Catalog, beam: int = 0, beams: int = 1, *,
                          path: str | None = None) -> Predictions:
  """`read_predictions` of rows already in memory (e.g. a decoding setting being tuned).

  path: the file they came from, for line numbers in messages (None: rows made in memory).
  """
  if beams < 1 or (beams > 1 and beam != 0):
    raise ValueError(f"beams={beams} with beam={beam}: several beams always start at predict[0]")
  texts, target_ids, groups, empty, beam_texts = [], [], [], [], []
  for i, row in enumerate(rows):
    where = (lambda: f"{path}:{_row_line(path, i)}: row {i}") if path else (lambda: f"row {i}")
    if not isinstance(row, dict):
      raise UserError(f"{where()}: expected an object, got {type(row).__name__}")
    if "predict" not in row:
      raise UserError(f"{where()}: no `predict` field; generate predictions first "
                      "(launch/generate.py writes it)")
    predict = row["predict"]
    if isinstance(predict, str):
      predict = [predict]
    if not isinstance(predict, list) or not all(isinstance(p, str) for p in predict):
      raise UserError(f"{where()}: `predict` must be a string or a list of strings")
    if beams > 1:
      row_texts = [clean_text(p) for p in predict[:beams]]
      row_texts += [""] * (beams - len(row_texts))
      beam_texts.append(row_texts)
      text = row_texts[0]
      empty.append(not any(row_texts))
    else:
      text = clean_text(predict[beam]) if len(predict) > beam else ""
      empty.append(not text)
    texts.append(text)
    target = _target_of(row, catalog, where)
    target_ids.append(target)
    groups.append(catalog.same_title(target))
  width = max(len(g) for g in groups)
  targets = np.full((len(rows), width), -1, np.int32)
  for i, g in enumerate(groups):
    targets[i, :len(g)] = g
  return Predictions(path or "<memory>", texts, np.asarray(target_ids, np.int32), targets,
                     np.asarray(empty, bool), rows, beam_texts if beams > 1 else None)


def _target_of(row: dict, catalog: Catalog, where) -> int:
  if "target_item_id" in row:
    t = row["target_item_id"]
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < catalog.num_items:
      raise UserError(f"{where()}: target_item_id {t!r} is not in the catalog {catalog.path} "
                      f"(ids 0..{catalog.num_items - 1}); were predictions made on other data?")
    return t
  if isinstance(row.get("output"), str):
    ids = catalog.ids_by_title.get(clean_text(row["output"]))
    if not ids:
      raise UserError(f"{where()}: target title {row['output']!r} is not in the catalog "
                      f"{catalog.path}")
    return ids[0]
  raise UserError(f"{where()}: no `target_item_id` (or `output` title) to evaluate against")


def read_cf_scores(path: str, predictions: Predictions, num_items: int) -> np.ndarray:
  """A [rows, N] score matrix from a sequential model, rows aligned with the prediction file."""
  return read_score_matrix(path, predictions.num_rows, num_items, predictions.path)


def read_score_matrix(path: str, num_rows: int, num_items: int, rows_path: str) -> np.ndarray:
  """A baseline's exported [rows, N] scores (baselines/run.py), checked against rows_path's rows."""
  scores = read_npy(path, ndim=2)
  if scores.shape != (num_rows, num_items):
    raise UserError(f"{path}: CF scores have shape {scores.shape} but {rows_path} has "
                    f"{num_rows} rows and the catalog {num_items} items; expected "
                    f"({num_rows}, {num_items}) with rows in the same order")
  if scores.dtype.kind not in "fiu":
    raise UserError(f"{path}: CF scores must be numbers, got dtype {scores.dtype}")
  return scores


def _row_line(path: str, index: int) -> int:
  """1-based line where element `index` of the top-level JSON list starts (for messages only)."""
  text = files.read_text(path)
  decoder = json.JSONDecoder()
  pos = text.index("[") + 1
  for i in range(index + 1):
    while text[pos] in " \t\r\n,":
      pos += 1
    if i == index:
      return text.count("\n", 0, pos) + 1
    _, pos = decoder.raw_decode(text, pos)
  return 1
