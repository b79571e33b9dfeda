"""Every data-reading path rejects malformed input with the file, the line/row and the reason.

One test per case (issue: reliability). The launchers turn these UserErrors into exit status 2
with no traceback (tests/test_pipeline.py, tests/*/test_*launcher*); here we check the messages
on a real prepared ML-100K directory and on small hand-made raw files.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from bigrec_jax import files
from bigrec_jax.data import amazon, movielens, prepare, prepared
from bigrec_jax.evaluate import inputs
from bigrec_jax.files import UserError


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("ml100k") / "data")
  prepare.prepare("ml-100k", out, options=prepare.PrepareOptions(eval_sample_size=20))
  return out


@pytest.fixture
def data(ml100k, tmp_path):
  """A private copy of the prepared directory that a test may break."""
  return shutil.copytree(ml100k, tmp_path / "data")


def _rows(path):
  return json.load(open(path))


def _write(path, rows):
  prepared.write_rows(str(path), rows)


def _predictions(data, tmp_path, edit=None, n=20):
  rows = _rows(os.path.join(data, "test_5000.json"))[:n]
  for r in rows:
    r["predict"] = [r["output"]] * 4
  if edit:
    edit(rows)
  path = str(tmp_path / "pred.json")
  files.write_json(path, rows)
  return path


def _raises(match, fn, *args, **kw):
  with pytest.raises(UserError, match=match) as e:
    fn(*args, **kw)
  return str(e.value)


def test_truncated_json(data):
  path = os.path.join(data, "test_5000.json")
  text = open(path).read()
  open(path, "w").write(text[: len(text) // 2])
  _raises(r"test_5000\.json:\d+: invalid JSON", prepared.read_rows, path)


def test_row_without_output(data):
  path = os.path.join(data, "test_5000.json")
  rows = _rows(path)
  del rows[3]["output"]
  _write(path, rows)
  _raises(r"test_5000\.json.*row 3.*missing 'output'", prepared.read_rows, path,
          prepared.read_items(data))


def test_unknown_target_item_id(data):
  path = os.path.join(data, "valid_5000.json")
  rows = _rows(path)
  rows[5]["target_item_id"] = 99999
  _write(path, rows)
  _raises(r"valid_5000\.json.*row 5.*unknown item id 99999", prepared.read_rows, path,
          prepared.read_items(data))


def test_unknown_history_item_id(data):
  path = os.path.join(data, "train.json")
  rows = _rows(path)[:50]
  rows[7]["history_item_ids"][2] = -4
  _write(path, rows)
  _raises(r"train\.json.*row 7.*unknown item id -4", prepared.read_rows, path,
          prepared.read_items(data))


def test_empty_history_is_a_row_but_a_bad_history_id_is_not(data):
  # The reference's Amazon rule makes empty-history examples (single-review users).
  path = os.path.join(data, "test_5000.json")
  rows = _rows(path)
  rows[0]["history_item_ids"] = []
  _write(path, rows)
  assert prepared.read_rows(path, prepared.read_items(data))[0]["history_item_ids"] == []
  rows[0]["history_item_ids"] = ["7"]
  _write(path, rows)
  _raises(r"test_5000\.json.*row 0.*history_item_ids must be integers", prepared.read_rows, path,
          prepared.read_items(data))


def test_non_utf8_byte_in_predictions(data, tmp_path):
  path = _predictions(data, tmp_path)
  raw = open(path, "rb").read()
  cut = raw.index(b"\n", 200)
  open(path, "wb").write(raw[:cut] + b"\xff" + raw[cut:])
  _raises(r"pred\.json:\d+: not valid UTF-8", inputs.read_predictions, path,
          inputs.read_catalog(data))


def test_non_utf8_byte_in_movielens_100k(tmp_path):
  inter = tmp_path / "ml-100k.inter"
  item = tmp_path / "ml-100k.item"
  inter.write_bytes(b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t5\t10\n")
  item.write_bytes(b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                   b"1\tToy Story\t1995\tAnimation\n2\tCaf\xe9 Society\t1995\tDrama\n")
  _raises(r"(?i)ml-100k\.item:3: not valid UTF-8", movielens.read_ml100k, str(inter), str(item))


def test_title_with_tab_in_catalog(data):
  path = os.path.join(data, "items.tsv")
  lines = open(path, encoding="utf-8").read().split("\n")
  lines[4] = lines[4] + "\textra"
  open(path, "w", encoding="utf-8").write("\n".join(lines))
  _raises(r"items\.tsv:5: title contains a tab", prepared.read_items, data)


def test_title_with_surrounding_quotes_in_catalog(data):
  path = os.path.join(data, "items.tsv")
  lines = open(path, encoding="utf-8").read().split("\n")
  i, title = lines[9].split("\t", 1)
  lines[9] = f'{i}\t"{title}"'
  open(path, "w", encoding="utf-8").write("\n".join(lines))
  _raises(r"items\.tsv:10: title has surrounding spaces or double quotes", prepared.read_items,
          data)


def test_row_output_with_unbalanced_quote(data):
  path = os.path.join(data, "test_5000.json")
  rows = _rows(path)
  rows[2]["output"] = rows[2]["output"][:-1]
  _write(path, rows)
  _raises(r"test_5000\.json.*row 2.*quoted title", prepared.read_rows, path,
          prepared.read_items(data))


def test_movielens_dat_line_with_missing_field(tmp_path):
  ratings = tmp_path / "ratings.dat"
  movies = tmp_path / "movies.dat"
  ratings.write_text("1::1::5::978300760\n1::2::4\n")
  movies.write_text("1::Toy Story (1995)::Animation\n2::Jumanji (1995)::Adventure\n")
  _raises(r"ratings\.dat:2", movielens.read_ml_dat, str(ratings), str(movies))


def test_amazon_broken_json_line(tmp_path):
  reviews = tmp_path / "reviews.json"
  meta = tmp_path / "meta.json"
  meta.write_text('{"asin": "A1", "title": "Game One"}\n{"asin": "A2", "title": "Game Two"}\n')
  reviews.write_text('{"reviewerID": "u", "asin": "A1", "overall": 5, "unixReviewTime": 1}\n'
                     '{"reviewerID": "u", "asin": "A2", "overall": 5, "unixRe\n')
  _raises(r"reviews\.json:2", amazon.read_amazon, str(reviews), str(meta))


def test_prediction_row_without_predict(data, tmp_path):
  path = _predictions(data, tmp_path, lambda rows: rows[4].pop("predict"))
  _raises(r"pred\.json:\d+: row 4: no `predict`", inputs.read_predictions, path,
          inputs.read_catalog(data))


@pytest.mark.parametrize("shape, what", [((19, 1682), "rows"), ((20, 1600), "columns|items")])
def test_cf_score_file_with_wrong_shape(data, tmp_path, shape, what):
  catalog = inputs.read_catalog(data)
  preds = inputs.read_predictions(_predictions(data, tmp_path), catalog)
  path = str(tmp_path / "cf.npy")
  np.save(path, np.zeros(shape, np.float32))
  msg = _raises(r"cf\.npy", inputs.read_cf_scores, path, preds, catalog.num_items)
  assert any(w in msg for w in what.split("|")), msg


def test_nan_in_cf_score_file(data, tmp_path):
  catalog = inputs.read_catalog(data)
  preds = inputs.read_predictions(_predictions(data, tmp_path), catalog)
  scores = np.zeros((20, catalog.num_items), np.float32)
  scores[13, 7] = np.nan
  path = str(tmp_path / "cf.npy")
  np.save(path, scores)
  _raises(r"cf\.npy.*row 13", inputs.read_cf_scores, path, preds, catalog.num_items)


def test_nan_in_embedding_file(tmp_path):
  emb = np.ones((50, 8), np.float32)
  emb[31, 2] = np.inf
  path = str(tmp_path / "catalog_embeddings.npy")
  np.save(path, emb)
  _raises(r"catalog_embeddings\.npy: non-finite value .* row 31", files.read_npy, path, ndim=2)


def test_popularity_with_wrong_length(data):
  path = os.path.join(data, "popularity.json")
  counts = json.load(open(path))
  files.write_json(path, counts[:-3])
  _raises(r"popularity\.json", prepared.read_popularity, data, 1682)


def test_prompt_longer_than_the_context(smollm2, data):
  from bigrec_jax.generate import runner

  rows = _rows(os.path.join(data, "test_5000.json"))[:3]
  rows[1]["input"] = rows[1]["input"] * 40
  generator = runner.Generator(smollm2, runner.GenerateOptions(max_prompt_len=512,
                                                                progress=False))
  _raises(r"rows: row 1: the prompt has \d+ tokens, more than the 512 allowed",
          generator.prompt_ids, rows, "rows")
