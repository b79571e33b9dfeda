"""The array_record TFDS dataset: built and read back without TensorFlow, rows unchanged."""
from __future__ import annotations

import json
import os

import pytest

from bigrec_jax.data import prepare, prepared, tfds_builder
from bigrec_jax.files import UserError


def test_tfds_round_trip(tmp_path, toy_dat):
  out = str(tmp_path / "toy")
  stats = prepare.prepare("ml-1m", out, *toy_dat, prepare.PrepareOptions(
      history_len=2, min_history=2, keep_last_of_short_users=True, target_rating_above="none",
      build_tfds=True))
  assert stats["tfds_dir"].startswith(os.path.join(out, "tfds"))
  assert any(f.startswith("bigrec_instructions-train.array_record") for f in os.listdir(stats["tfds_dir"]))
  data = prepared.load_prepared(out)
  data_dir = tfds_builder.default_data_dir(out)
  for split in ("train", "valid", "test_5000"):
    back = tfds_builder.read(data_dir, split)
    assert [r.pop("index") for r in back] == list(range(len(back)))
    assert back == data.rows(split)
  source = tfds_builder.data_source(data_dir, "train")
  assert sorted(int(source[i]["index"]) for i in range(len(source))) == [0, 1, 2, 3, 4]
  with pytest.raises(UserError, match="no built"):
    tfds_builder.data_source(str(tmp_path / "nothing"), "train")
  assert not (tmp_path / "nothing").exists()
  with pytest.raises(UserError, match="no built .* split 'nope'"):
    tfds_builder.data_source(data_dir, "nope")


def test_tfds_rebuild_replaces_old_records(tmp_path, toy_dat):
  out = str(tmp_path / "toy")
  prepare.prepare("ml-1m", out, *toy_dat, prepare.PrepareOptions(history_len=2, min_history=2))
  rows = prepared.load_prepared(out).rows("train")
  tfds_builder.build(out, rows_by_split={"train": rows})
  tfds_builder.build(out, rows_by_split={"train": rows[:1]})
  assert len(tfds_builder.read(tfds_builder.default_data_dir(out), "train")) == 1
  assert json.load(open(os.path.join(out, "stats.json")))["examples"]["train"] == 4
