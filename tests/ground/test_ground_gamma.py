"""Choosing gamma per metric on validation and applying it to test."""
from __future__ import annotations

import numpy as np
import pytest

from bigrec_jax.evaluate.metrics import ranking_metrics
from bigrec_jax.ground import gamma, kernel

import ground_cases
import ground_reference as ref

KS = (1, 3, 5, 10)
POP_GRID = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
CF_GRID = (0.0, 0.01, 0.5, 1.0, 3.0, 50.0)


def test_grids_are_the_spec_grids():
  assert gamma.POP_GAMMAS == tuple(float(g) for g in range(100))
  assert len(gamma.CF_GAMMAS) == 199 and gamma.CF_GAMMAS[:3] == (0.0, 0.01, 0.02)
  assert gamma.CF_GAMMAS[99:102] == (0.99, 1.0, 2.0) and gamma.CF_GAMMAS[-1] == 99.0


def test_each_metric_chooses_by_itself_and_ties_go_to_the_smallest_gamma():
  curves = {"NDCG@5": [0.1, 0.3, 0.2, 0.3], "HR@5": [0.5, 0.4, 0.4, 0.6]}
  c = gamma.choose("pop", [0.0, 1.0, 2.0, 3.0], curves)
  assert c.chosen == {"NDCG@5": (1.0, 0.0), "HR@5": (3.0, 0.0)}
  assert c.valid == {"NDCG@5": 0.3, "HR@5": 0.6}
  c = gamma.choose("cf", [0.0, 0.5, 1.0, 2.0], curves, fixed=4.0)
  assert c.chosen["HR@5"] == (4.0, 2.0)


def _brute_force(case, pairs, invalid=None):
  """metric -> values over pairs from the numpy reference (reference loops for metrics)."""
  out = {}
  for gp, gc in pairs:
    ranks = ref.best_target_ranks(ref.keys(case["queries"], case["table"], case["pop"],
                                           case["cf"], gp, gc), case["targets"])
    if invalid is not None:
      ranks = np.where(invalid, len(case["table"]), ranks)
    for m, v in ref.reference_metrics(ranks, KS).items():
      out.setdefault(m, []).append(v)
  return out


@pytest.fixture(scope="module")
def case_and_items():
  case = ground_cases.make_case(seed=2, integer=False, q=40)
  return case, kernel.place_items(case["table"], case["pop"])


def test_search_pop_and_cf_match_brute_force(case_and_items):
  case, items = case_and_items
  invalid = np.zeros(40, bool)
  invalid[::7] = True
  for vary, grid in (("pop", POP_GRID), ("cf", CF_GRID)):
    choice = gamma.search(case["queries"], items, case["targets"], vary=vary, grid=grid,
                          cf=case["cf"], ks=KS, invalid_rows=invalid, query_batch=16)
    expect = _brute_force(case, gamma.pairs(vary, grid), invalid)
    for m in expect:
      np.testing.assert_allclose(choice.curves[m], expect[m], rtol=1e-12, err_msg=m)
      best = int(np.argmax(expect[m]))
      assert choice.chosen[m] == tuple(gamma.pairs(vary, grid)[best]), m
    assert len(set(choice.chosen.values())) > 1  # not a degenerate test


def test_search_both_keeps_pop_gamma_and_tunes_cf(case_and_items):
  case, items = case_and_items
  pop = gamma.search(case["queries"], items, case["targets"], vary="pop", grid=POP_GRID, ks=KS)
  both = gamma.search_both(case["queries"], items, case["targets"], case["cf"], pop,
                           cf_grid=CF_GRID, ks=KS)
  for m, (gp, gc) in both.chosen.items():
    assert gp == pop.chosen[m][0]
    expect = _brute_force(case, gamma.pairs("cf", CF_GRID, fixed=gp))[m]
    np.testing.assert_allclose(both.curves[m], expect, rtol=1e-12)
    assert gc == CF_GRID[int(np.argmax(expect))]
    assert both.valid[m] >= pop.valid[m] - 1e-12  # cf gamma 0 is in the grid


def test_apply_reads_each_metric_at_its_own_gamma(case_and_items):
  case, items = case_and_items
  choice = gamma.choose("pop", [0.0, 5.0], {"NDCG@3": [0.0, 1.0], "HR@3": [1.0, 0.0]})
  got = gamma.apply(case["queries"], items, case["targets"], choice, ks=(3,))
  at = {g: ranking_metrics(kernel.ground(case["queries"], items, k=0, targets=case["targets"],
                                         gamma_pop=g).target_ranks, (3,)) for g in (0.0, 5.0)}
  assert got == {"NDCG@3": at[5.0]["NDCG@3"], "HR@3": at[0.0]["HR@3"]}
