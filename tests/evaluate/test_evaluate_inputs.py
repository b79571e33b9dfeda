"""Evaluation inputs: parsed as the contract says, bad ones rejected with the file and row."""
from __future__ import annotations

import numpy as np
import pytest

from bigrec_jax.evaluate import inputs
from bigrec_jax.files import UserError

import evaluate_fixtures as fx


@pytest.fixture
def prepared(tmp_path):
  fx.write_prepared(str(tmp_path / "data"))
  return str(tmp_path / "data")


def test_predictions_give_texts_targets_and_duplicate_title_groups(prepared, tmp_path):
  catalog = inputs.read_catalog(prepared)
  assert catalog.num_items == 32 and catalog.same_title(30) == [30, 31]
  path = fx.write_rows(str(tmp_path / "p.json"), fx.prediction_rows(12, seed=1, empty_every=5))
  p = inputs.read_predictions(path, catalog)
  assert p.num_rows == 12 and p.targets.shape == (12, 2)
  assert list(p.targets[0]) == [30, 31] and p.target_ids[0] == 31  # "Twin": both ids count
  assert (p.targets[p.target_ids < 30, 1] == -1).all()
  assert p.empty[0] and p.empty[5] and not p.empty[1]
  assert p.texts[1] == p.rows[1]["predict"][0].strip().strip('"')  # quotes and newline gone
  assert inputs.read_predictions(path, catalog, beam=1).texts[1] == "other beam"


def test_several_beams_use_what_each_row_has(prepared, tmp_path):
  catalog = inputs.read_catalog(prepared)
  rows = fx.prediction_rows(6, seed=1, empty_every=5)  # rows 0 and 5: predict[0] is ''
  rows[1]["predict"] = ['"Movie 3"', '"Twin"', '"Movie 4"']
  rows[2]["predict"] = '"Movie 7"'  # a bare string: one beam
  rows[3]["predict"] = ["", ""]
  p = inputs.read_predictions(fx.write_rows(str(tmp_path / "p.json"), rows), catalog, beams=3)
  assert p.beams == 3 and p.beam_texts[1] == ["Movie 3", "Twin", "Movie 4"]
  assert p.beam_texts[2] == ["Movie 7", "", ""] and p.beam_texts[0] == ["", "other beam", ""]
  assert list(p.empty) == [False, False, False, True, False, False]  # row 0 still has a beam
  assert p.beam_present()[:, 0].tolist() == [False, True, True, False, True, False]
  assert p.texts[1] == "Movie 3"
  with pytest.raises(ValueError, match="predict\\[0\\]"):
    inputs.read_predictions(fx.write_rows(str(tmp_path / "p.json"), rows), catalog, beam=1,
                            beams=2)


def test_rows_without_predict_name_the_file_and_line(prepared, tmp_path):
  rows = fx.prediction_rows(4, seed=1)
  del rows[2]["predict"]
  path = fx.write_rows(str(tmp_path / "p.json"), rows)
  with pytest.raises(UserError, match=r"p\.json:4: row 2: no `predict`"):
    inputs.read_predictions(path, inputs.read_catalog(prepared))


@pytest.mark.parametrize("change, message", [
    (dict(target_item_id=99), "target_item_id 99 is not in the catalog"),
    (dict(target_item_id="3"), "target_item_id '3' is not in the catalog"),
    (dict(predict=[3]), "must be a string or a list of strings"),
])
def test_bad_rows_are_user_errors(prepared, tmp_path, change, message):
  rows = fx.prediction_rows(3, seed=1)
  rows[1].update(change)
  path = fx.write_rows(str(tmp_path / "p.json"), rows)
  with pytest.raises(UserError, match=message):
    inputs.read_predictions(path, inputs.read_catalog(prepared))


def test_target_title_fallback_and_missing_title(prepared, tmp_path):
  catalog = inputs.read_catalog(prepared)
  rows = fx.prediction_rows(2, seed=1)
  for r in rows:
    del r["target_item_id"]
  p = inputs.read_predictions(fx.write_rows(str(tmp_path / "a.json"), rows), catalog)
  assert list(p.targets[0]) == [30, 31]
  rows[1]["output"] = '"Not A Movie"'
  with pytest.raises(UserError, match="'\"Not A Movie\"' is not in the catalog"):
    inputs.read_predictions(fx.write_rows(str(tmp_path / "b.json"), rows), catalog)


def test_cf_scores_must_match_rows_items_and_be_finite(prepared, tmp_path):
  catalog = inputs.read_catalog(prepared)
  p = inputs.read_predictions(fx.write_rows(str(tmp_path / "p.json"), fx.prediction_rows(5, 1)),
                              catalog)
  good = tmp_path / "cf.npy"
  np.save(good, np.ones((5, 32), np.float32))
  assert inputs.read_cf_scores(str(good), p, 32).shape == (5, 32)
  np.save(tmp_path / "rows.npy", np.ones((4, 32), np.float32))
  with pytest.raises(UserError, match=r"shape \(4, 32\) but .*p\.json has 5 rows"):
    inputs.read_cf_scores(str(tmp_path / "rows.npy"), p, 32)
  np.save(tmp_path / "cols.npy", np.ones((5, 31), np.float32))
  with pytest.raises(UserError, match="expected \\(5, 32\\)"):
    inputs.read_cf_scores(str(tmp_path / "cols.npy"), p, 32)
  bad = np.ones((5, 32), np.float32)
  bad[3, 7] = np.nan
  np.save(tmp_path / "nan.npy", bad)
  with pytest.raises(UserError, match="NaN/inf\\) at row 3"):
    inputs.read_cf_scores(str(tmp_path / "nan.npy"), p, 32)


def test_popularity_must_cover_the_catalog(prepared):
  import json, os
  with open(os.path.join(prepared, "popularity.json"), "w") as f:
    json.dump([1, 2, 3], f)
  with pytest.raises(UserError, match="popularity.json"):
    inputs.read_popularity(prepared, 32)
