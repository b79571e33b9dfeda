"""Sequence, split, sampling and popularity rules on a toy log with hand-written expectations."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bigrec_jax.data import movielens, prepare, prepared, prompts, sequences
from bigrec_jax.files import UserError

# Item ids: movie 1 -> 0, 2 -> 1, 3 -> 2, 4 -> 3, 5 -> 4 (movies.dat order).
# Per user, time-sorted (user order = first appearance in ratings.dat: 2, 1, 3, 4):
#   user 2: 3@105 r4, 1@115 r5, 5@115 r3 (tie: file order), 2@125 r5
#   user 1: 1@100 r5, 2@110 r4, 3@120 r2, 4@130 r5, 5@140 r4
#   user 3: 2@101 r5
#   user 4: 1@145 r2, 4@150 r1
MOVIE_RULE = sequences.SequenceRules(history_len=2, min_history=2, target_rating_above=3)
GAME_RULE = sequences.SequenceRules(history_len=2, min_history=2, keep_last_of_short_users=True)
GAME_RULE_NO_EMPTY = dataclasses.replace(GAME_RULE, drop_empty_history=True)


def _plain(examples):
  return [(e.user_id, list(e.history), e.target, e.timestamp) for e in examples]


def test_movie_rule_full_history_and_positive_targets(toy_dat):
  log = movielens.read_ml_dat(*toy_dat)
  # user 2 position 2 (movie 5, rating 3) and user 1 position 2 (rating 2) are not targets;
  # users 3 and 4 are too short.
  assert _plain(sequences.build_examples(log, MOVIE_RULE)) == [
      ("2", [0, 4], 1, 125),
      ("1", [1, 2], 3, 130),
      ("1", [2, 3], 4, 140),
  ]


def test_game_rule_keeps_last_item_of_short_users(toy_dat):
  log = movielens.read_ml_dat(*toy_dat)
  with_empty = _plain(sequences.build_examples(log, GAME_RULE))
  assert with_empty[0] == ("3", [], 1, 101)  # user 3 has one item: one example, empty history
  assert _plain(sequences.build_examples(log, GAME_RULE_NO_EMPTY)) == with_empty[1:] == [
      ("2", [2, 0], 4, 115),
      ("1", [0, 1], 2, 120),
      ("2", [0, 4], 1, 125),
      ("1", [1, 2], 3, 130),
      ("1", [2, 3], 4, 140),
      ("4", [0], 3, 150),  # user 4 has 2 items: one example, history of 1
  ]


def test_reference_range_of_game_rule():
  """Positions range(min(10, n-1), n) of the reference notebook, for every length n."""
  for n in range(1, 25):
    log = _single_user_log(n)
    for drop_empty in (False, True):
      got = [len(e.history) for e in sequences.build_examples(
          log, sequences.SequenceRules(keep_last_of_short_users=True, drop_empty_history=drop_empty))]
      want = [min(i, 10) for i in range(min(10, n - 1), n) if i >= int(drop_empty)]
      assert got == want, (n, drop_empty)


def _single_user_log(n):
  from bigrec_jax.data.raw import make_log

  return make_log("t", [str(i) for i in range(n)], [f"T{i}" for i in range(n)], ["u"] * n,
                  list(range(n)), [5.0] * n, list(range(n)), {"interactions": "-", "items": "-"})


def test_split_is_80_10_10_in_time_order():
  assert [len(p) for p in sequences.split_examples(list(range(10)))] == [8, 1, 1]
  assert [len(p) for p in sequences.split_examples(list(range(7)))] == [5, 1, 1]  # int(5.6), int(6.3)
  assert [len(p) for p in sequences.split_examples(list(range(49736)))] == [39788, 4974, 4974]
  train, valid, test = sequences.split_examples(list(range(23)))
  assert train + valid + test == list(range(23))


def test_training_popularity_counts_only_what_training_examples_show(toy_dat):
  log = movielens.read_ml_dat(*toy_dat)
  examples = sequences.build_examples(log, GAME_RULE_NO_EMPTY)
  train, valid, test = sequences.split_examples(examples)
  assert (len(train), len(valid), len(test)) == (4, 1, 1)
  # user 2 positions 0-3 (items 2, 0, 4, 1) and user 1 positions 0-3 (items 0, 1, 2, 3)
  assert sequences.training_popularity(log, train) == [2, 2, 2, 1, 1]
  # movie rule, 2 training examples: user 2 positions 1-3 (0, 4, 1), user 1 positions 1-3 (1, 2, 3)
  movie_train = sequences.split_examples(sequences.build_examples(log, MOVIE_RULE))[0]
  assert sequences.training_popularity(log, movie_train) == [1, 2, 1, 1, 1]


def test_rows_carry_ids_and_the_reference_text(toy_dat):
  log = movielens.read_ml_dat(*toy_dat)
  row = sequences.make_row(sequences.build_examples(log, MOVIE_RULE)[0], log.titles, "movie")
  assert row == {
      "instruction": ("Given a list of movies the user has watched before, please recommend a new "
                      "movie that the user likes to the user."),
      "input": 'The user has watched the following movies before:"Alpha (1990)", "Epsilon (1994)"\n ',
      "output": '"Beta, The (1991)"',
      "target_item_id": 1, "history_item_ids": [0, 4], "target_timestamp": 125,
      "user_id": "2", "domain": "movie"}


def test_eval_sample_matches_pandas_sample_with_seed_42():
  rows = list(range(12000))
  picked = sequences.sample_rows(rows, 5000, 42)
  # pandas DataFrame.sample(n, random_state=42) == RandomState(42).choice(len, n, replace=False)
  assert picked == np.random.RandomState(42).choice(12000, 5000, replace=False).tolist()
  assert len(set(picked)) == 5000
  assert sequences.sample_rows(rows[:300], 5000, 42) == rows[:300]  # all rows when fewer


def test_few_shot_is_shuffle_select_shuffle():
  rows = list(range(100))
  first = np.random.default_rng(3).permutation(100)[:10]
  expected = first[np.random.default_rng(3).permutation(10)].tolist()
  assert sequences.few_shot(rows, 10, 3) == expected
  assert sequences.few_shot(rows, 10, 3) != sequences.few_shot(rows, 10, 4)
  assert sorted(sequences.few_shot(rows, -1, 0)) == rows
  assert len(sequences.few_shot(rows, 500, 0)) == 100
  with pytest.raises(UserError):
    sequences.few_shot(rows, -2, 0)


def test_multi_domain_concat_keeps_each_domain(tmp_path, toy_dat):
  movie = tmp_path / "movie"
  game = tmp_path / "game"
  opts = dict(history_len=2, min_history=2)
  prepare.prepare("ml-1m", str(movie), *toy_dat, prepare.PrepareOptions(**opts))
  prepare.prepare("ml-1m", str(game), *toy_dat,
                  prepare.PrepareOptions(domain="game", target_rating_above="none",
                                         keep_last_of_short_users=True, **opts))
  rows = prepared.load_training_rows([str(movie), str(game)], sample=-1, seed=0)
  # movie: 5 examples (every rating; users 3 and 4 too short) -> 4 train; game: 7 -> 5 train
  assert [r["domain"] for r in rows] == ["movie"] * 4 + ["game"] * 5
  assert rows[-1]["instruction"] == prompts.INSTRUCTIONS["game"]
  assert rows[-1]["input"].startswith("The user has played the following video games before:")
  assert len(prepared.load_training_rows([str(movie), str(game)], sample=1, seed=0)) == 2
