"""Grounding several beams per row (rank-weighted per-beam distances) against numpy."""
from __future__ import annotations

import numpy as np
import pytest

from bigrec_jax.ground import kernel, signals

import ground_cases
import ground_reference as ref


def test_beam_rank_weights_renormalise_over_present_beams():
  w = signals.beam_rank_weights([[True, True, True, True], [True, False, True, False],
                                 [False, True, False, False], [False] * 4])
  np.testing.assert_allclose(w[0], np.array([1, 1 / 2, 1 / 3, 1 / 4]) / (25 / 12), rtol=1e-6)
  np.testing.assert_allclose(w[1], [0.75, 0, 0.25, 0], rtol=1e-6)
  np.testing.assert_array_equal(w[2], [0, 1, 0, 0])
  np.testing.assert_array_equal(w[3], [0, 0, 0, 0])


def test_one_beam_is_the_single_query_path_bit_for_bit():
  case = ground_cases.make_case(**ground_cases.CASES["float"])
  items = kernel.place_items(case["table"], case["pop"])
  q1 = case["queries"][:, None, :]
  for gp, gc in ground_cases.SETTINGS:
    kw = dict(k=ground_cases.K, targets=case["targets"], cf=case["cf"], gamma_pop=gp, gamma_cf=gc,
              query_batch=8)
    a = kernel.ground(case["queries"], items, **kw)
    b = kernel.ground(q1, items, beam_weights=np.ones((23, 1), np.float32), **kw)
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)
  grid = dict(cf=case["cf"], query_batch=8)
  np.testing.assert_array_equal(
      kernel.target_ranks_grid(case["queries"], items, case["targets"], ground_cases.GRID, **grid),
      kernel.target_ranks_grid(q1, items, case["targets"], ground_cases.GRID, **grid))


@pytest.fixture(scope="module")
def beam_case():
  case = ground_cases.make_beam_case()
  items = kernel.place_items(case["table"], case["pop"])
  out = {}
  for gp, gc in ground_cases.SETTINGS:
    out[gp, gc] = kernel.ground(case["queries"], items, k=ground_cases.K, targets=case["targets"],
                                cf=case["cf"], gamma_pop=gp, gamma_cf=gc, query_batch=8,
                                beam_weights=case["weights"])
  out["grid"] = kernel.target_ranks_grid(case["queries"], items, case["targets"],
                                         ground_cases.GRID, cf=case["cf"], query_batch=8,
                                         beam_weights=case["weights"])
  return case, out


def test_four_beams_match_the_numpy_formula(beam_case):
  case, out = beam_case
  used = case["present"].any(1)
  assert (case["present"].sum(1) < 4).sum() >= 10 and not case["present"][2, 0]
  assert not used[16]  # a row with no prediction at all: all weights 0, every key 0 (id order)
  for gp, gc in ground_cases.SETTINGS:
    score = ref.beam_keys(case["queries"], case["table"], case["weights"], case["pop"],
                          case["cf"], gp, gc)
    assert ref.min_relative_gap(score[used]) > 1e-5, "pick another seed: near-tied scores"
    got = out[gp, gc]
    np.testing.assert_array_equal(got.top_ids, ref.top_k(score, ground_cases.K),
                                  err_msg=str((gp, gc)))
    np.testing.assert_array_equal(got.target_ranks, ref.best_target_ranks(score, case["targets"]))
    np.testing.assert_allclose(got.top_scores, np.take_along_axis(score, got.top_ids, 1),
                               rtol=1e-4, atol=1e-5)
  for g, ranks in zip(ground_cases.GRID, out["grid"]):
    score = ref.beam_keys(case["queries"], case["table"], case["weights"], case["pop"],
                          case["cf"], float(g[0]), float(g[1]))
    np.testing.assert_array_equal(ranks, ref.best_target_ranks(score, case["targets"]), str(g))
    if (float(g[0]), float(g[1])) in out:  # the grid equals the single kernel per gamma
      np.testing.assert_array_equal(ranks, out[float(g[0]), float(g[1])].target_ranks)


def test_missing_beams_are_ignored_whatever_their_embedding(beam_case):
  case, out = beam_case
  items = kernel.place_items(case["table"], case["pop"])
  q = case["queries"].copy()
  q[~case["present"]] = 1e6  # garbage where no prediction exists: weight 0 must hide it
  got = kernel.ground(q, items, k=ground_cases.K, targets=case["targets"], gamma_pop=3.0,
                      query_batch=8, beam_weights=case["weights"])
  np.testing.assert_array_equal(got.top_ids, out[3.0, 0.0].top_ids)
  np.testing.assert_array_equal(got.target_ranks, out[3.0, 0.0].target_ranks)


def test_bad_beam_arguments_are_rejected():
  items = kernel.place_items(np.zeros((4, 2)), np.zeros(4))
  with pytest.raises(ValueError, match="beam_weights"):
    kernel.ground(np.zeros((1, 3, 2)), items, k=1)
  with pytest.raises(ValueError, match="beam_weights have shape"):
    kernel.ground(np.zeros((1, 3, 2)), items, k=1, beam_weights=np.ones((1, 2)))
