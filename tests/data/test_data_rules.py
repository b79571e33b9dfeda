"""The reference's data rules, checked against a few-line restatement of its notebooks.

The expected examples are computed here, independently of `bigrec_jax.data.sequences`, from the
rules as the reference notebooks state them (REFERENCE.md "Data"):
- MovieLens: per user (time-sorted, ties in file order), every position i >= 10, whatever the
  rating; option `target_rating_above=3` keeps targets rated above 3 (the first commit's rule);
- Amazon: positions `range(min(10, n - 1), n)`, so a single-review user gives one example with an
  empty history; option `drop_empty_history` drops those;
then all examples sorted by target time (stable) and cut at int(0.8 n) and int(0.9 n).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bigrec_jax.data import prepare

HISTORY = 10
ROOT = __file__.rsplit("/tests/", 1)[0]


def _toy_log(seed=7, users=40, items=30):
  """(user, item, rating, time) in file order: lengths 1-24, ties and shuffled lines included."""
  rng = np.random.default_rng(seed)
  records = []
  for u in range(users):
    n = int(rng.integers(1, 25))
    times = np.sort(rng.integers(1000, 1060, size=n))  # few distinct times: many ties
    for t, item in zip(times, rng.choice(items, size=n, replace=False)):
      records.append((f"u{u}", int(item) + 1, int(rng.integers(1, 6)), int(t)))
  order = rng.permutation(len(records))
  return [records[i] for i in order], items


def _expected(records, first_position, keep):
  """The notebooks' loops: examples per user, sorted by target time, split 80/10/10."""
  by_user: dict[str, list] = {}
  for line, (user, item, rating, t) in enumerate(records):
    by_user.setdefault(user, []).append((t, line, item, rating))
  examples = []
  for user, seq in by_user.items():  # users in order of first appearance
    seq.sort()  # by time, then file line
    for i in range(first_position(len(seq)), len(seq)):
      if keep(seq, i):
        examples.append((user, [s[2] for s in seq[max(0, i - HISTORY):i]], seq[i][2], seq[i][0]))
  examples.sort(key=lambda e: e[3])  # stable
  n = len(examples)
  return examples[:int(n * 0.8)], examples[int(n * 0.8):int(n * 0.9)], examples[int(n * 0.9):]


def _built_examples(built, raw_ids):
  out = []
  for split in prepare.SPLITS:
    out.append([(r["user_id"], [raw_ids[i] for i in r["history_item_ids"]],
                 raw_ids[r["target_item_id"]], r["target_timestamp"]) for r in built.rows[split]])
  return out


def _check(built, raw_ids, expected):
  got = _built_examples(built, raw_ids)
  assert [len(s) for s in got] == [len(s) for s in expected]
  for mine, theirs in zip(got, expected):
    assert mine[0] == theirs[0] and mine[-1] == theirs[-1]
    assert mine == theirs


@pytest.fixture(scope="module")
def movielens_dat(tmp_path_factory):
  records, items = _toy_log()
  d = tmp_path_factory.mktemp("ml")
  (d / "ratings.dat").write_text("".join(f"{u[1:]}::{i}::{r}::{t}\n" for u, i, r, t in records))
  (d / "movies.dat").write_text("".join(f"{i}::Movie {i} (1990)::Drama\n" for i in range(1, items + 1)))
  return records, str(d / "ratings.dat"), str(d / "movies.dat")


@pytest.fixture(scope="module")
def amazon_json(tmp_path_factory):
  records, items = _toy_log(seed=11)
  d = tmp_path_factory.mktemp("amazon")
  (d / "reviews.json").write_text("".join(
      json.dumps({"reviewerID": u, "asin": f"A{i}", "overall": float(r), "unixReviewTime": t}) + "\n"
      for u, i, r, t in records))
  (d / "meta.json").write_text("".join(json.dumps({"asin": f"A{i}", "title": f"Game {i}"}) + "\n"
                                       for i in range(1, items + 1)))
  return records, str(d / "reviews.json"), str(d / "meta.json")


@pytest.mark.parametrize("rating_rule", ["default", "3"])
def test_movielens_rules(movielens_dat, rating_rule):
  records, ratings, movies = movielens_dat
  built = prepare.build("ml-1m", ratings, movies, prepare.PrepareOptions(
      target_rating_above=rating_rule))
  raw_ids = [int(i) for i in built.log.item_raw_ids]
  keep_all = rating_rule == "default"
  expected = _expected([(u[1:], i, r, t) for u, i, r, t in records], lambda n: HISTORY,
                       lambda seq, i: keep_all or seq[i][3] > 3)
  assert sum(map(len, expected)) > 20  # the fixture really has examples of every split
  _check(built, raw_ids, expected)


@pytest.mark.parametrize("drop_empty", [False, True])
def test_amazon_rules(amazon_json, drop_empty):
  records, reviews, meta = amazon_json
  built = prepare.build("amazon", reviews, meta, prepare.PrepareOptions(drop_empty_history=drop_empty))
  raw_ids = [int(a[1:]) for a in built.log.item_raw_ids]
  expected = _expected(records, lambda n: min(HISTORY, n - 1),
                       lambda seq, i: not drop_empty or i >= 1)
  singles = sum(1 for split in expected for e in split if not e[1])
  assert (singles == 0) == drop_empty  # the fixture has single-review users
  _check(built, raw_ids, expected)


def test_ml100k_counts_match_the_reference():
  """The embedded ML-100K: the reference's 72,456 / 9,057 / 9,057; the option gives the old split."""
  def counts(*flags):
    import tempfile
    with tempfile.TemporaryDirectory() as out:
      result = subprocess.run([sys.executable, f"{ROOT}/launch/prepare_data.py", "--dataset=ml-100k",
                               f"--out_dir={out}/d", *flags], capture_output=True, text=True)
      assert result.returncode == 0, result.stderr
      stats = json.load(open(f"{out}/d/stats.json"))
    return [stats["examples"][s] for s in prepare.SPLITS], stats["rules"], result.stdout

  split, rules, printed = counts()
  assert split == [72456, 9057, 9057] and rules["target_rating_above"] is None
  assert "every target whatever its rating" in printed
  split, rules, printed = counts("--target_rating_above=3")
  assert split == [39788, 4974, 4974] and rules["target_rating_above"] == 3.0
  assert "only targets rated above 3" in printed and "whatever" not in printed
