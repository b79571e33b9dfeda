"""A TFDS dataset of prepared rows in `array_record` format, built and read without TensorFlow.

`tfds.data_source` gives random access (grain-style loaders, multi-host readers). Records come
back in TFDS's shuffled order, so every record keeps `index`, its position in the prepared
JSON file; `read` sorts by it.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from bigrec_jax import files
from bigrec_jax.files import UserError

NAME = "bigrec_instructions"
SPLITS = ("train", "valid", "test", "valid_5000", "test_5000")
_TEXT = ("instruction", "input", "output", "user_id", "domain")


class BigrecInstructions(tfds.core.GeneratorBasedBuilder):
  """BIGRec instruction rows (reference fields + item ids), one split per prepared row file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Prepared-data format version 1."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup needs the optional `importlib_resources` package for an installed
    # (editable) package; this file's path is what it would find.
    return epath.Path(__file__)

  def __init__(self, *, rows_by_split: dict[str, Sequence[dict]] | None = None, **kwargs):
    self._rows_by_split = rows_by_split
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    features = {"index": np.int64, "target_item_id": np.int64, "target_timestamp": np.int64,
                "history_item_ids": tfds.features.Sequence(np.int64)}
    features.update({k: tfds.features.Text() for k in _TEXT})
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                 description="BIGRec next-item instruction examples.")

  def _split_generators(self, dl_manager):
    if not self._rows_by_split:
      raise UserError(f"{NAME}: nothing to build (no rows given)")
    return {name: self._generate_examples(rows) for name, rows in self._rows_by_split.items()}

  def _generate_examples(self, rows):
    for i, row in enumerate(rows):
      yield i, {"index": i, "target_item_id": row["target_item_id"],
                "target_timestamp": row["target_timestamp"],
                "history_item_ids": list(row["history_item_ids"]),
                **{k: row[k] for k in _TEXT}}


def default_data_dir(prepared_dir: str) -> str:
  return os.path.join(os.fspath(prepared_dir), "tfds")


def build(prepared_dir: str, data_dir: str | None = None,
          rows_by_split: dict[str, Sequence[dict]] | None = None) -> str:
  """Writes the array_record dataset (rebuilt from scratch); returns its directory.

  Rows default to every split file present in `prepared_dir`, read and validated.
  """
  if rows_by_split is None:
    from bigrec_jax.data import prepared

    p = prepared.load_prepared(prepared_dir)
    rows_by_split = {s: p.rows(s) for s in SPLITS if files.exists(p.path(s))}
  tfds.disable_progress_bar()
  builder = BigrecInstructions(rows_by_split={k: v for k, v in rows_by_split.items() if v},
                               data_dir=data_dir or default_data_dir(prepared_dir),
                               file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS))
  return builder.data_dir


def data_source(data_dir: str, split: str):
  """Random-access source of one split (records in TFDS order; use the `index` field)."""
  if not files.isdir(os.path.join(data_dir, NAME)):
    raise UserError(f"{data_dir}: no built {NAME} dataset (build it with "
                    "launch/prepare_data.py --tfds)")
  try:
    return tfds.data_source(NAME, data_dir=data_dir, split=split, download=False)
  except (ValueError, FileNotFoundError, AssertionError, KeyError,
          tfds.core.registered.DatasetNotFoundError) as e:
    raise UserError(f"{data_dir}: no built {NAME} split {split!r} ({e})") from None


def decode(record: dict[str, Any]) -> dict[str, Any]:
  """A TFDS record back into a prepared row (bytes -> str, numpy -> int)."""
  row = {k: (v.decode("utf-8") if isinstance(v, bytes) else v) for k, v in record.items()}
  for k in ("index", "target_item_id", "target_timestamp"):
    row[k] = int(row[k])
  row["history_item_ids"] = [int(x) for x in np.asarray(row["history_item_ids"]).tolist()]
  return row


def read(data_dir: str, split: str) -> list[dict[str, Any]]:
  """Every row of a split in prepared-file order (the `index` field stays on each row)."""
  source = data_source(data_dir, split)
  rows = [decode(source[i]) for i in range(len(source))]
  rows.sort(key=lambda r: r["index"])
  return rows
