"""The grounding kernel against a plain numpy restatement of the reference, on 1 and 8 devices."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from bigrec_jax.evaluate.metrics import ranking_metrics
from bigrec_jax.ground import kernel

import ground_cases
import ground_reference as ref

HERE = os.path.dirname(os.path.abspath(__file__))


def _settings(case):
  return [(gp, gc) for gp, gc in ground_cases.SETTINGS if not gc or "cf" in case]


def _reference(case, gp, gc):
  return ref.keys(case["queries"], case["table"], case["pop"], case.get("cf"), gp, gc)


@pytest.fixture(scope="module")
def single_device():
  """Every case and setting grounded on one device (query batches of 8 force padding)."""
  out = {}
  for name, kw in ground_cases.CASES.items():
    case = ground_cases.make_case(**kw)
    items = kernel.place_items(case["table"], case["pop"])
    for gp, gc in _settings(case):
      out[name, gp, gc] = kernel.ground(case["queries"], items, k=ground_cases.K,
                                        targets=case["targets"], cf=case.get("cf"),
                                        gamma_pop=gp, gamma_cf=gc, query_batch=8)
  return out


@pytest.mark.parametrize("name", list(ground_cases.CASES))
def test_kernel_matches_numpy_reference(name, single_device):
  case = ground_cases.make_case(**ground_cases.CASES[name])
  for gp, gc in _settings(case):
    score = _reference(case, gp, gc)
    if name != "integer":  # float data: the check is only meaningful without near-ties
      assert ref.min_relative_gap(score) > 1e-5, "pick another seed: near-tied reference scores"
    got = single_device[name, gp, gc]
    np.testing.assert_array_equal(got.top_ids, ref.top_k(score, ground_cases.K), err_msg=str((gp, gc)))
    np.testing.assert_array_equal(got.target_ranks, ref.best_target_ranks(score, case["targets"]))
    expect = np.take_along_axis(score, got.top_ids, axis=1)
    np.testing.assert_allclose(got.top_scores, expect, rtol=1e-4, atol=1e-5)


def test_ties_go_to_the_lower_item_id(single_device):
  """Items 5 and 30 are identical: 5 always ranks before 30, with only other tied ids between."""
  case = ground_cases.make_case(**ground_cases.CASES["integer"])
  got = single_device["integer", 0.0, 0.0]
  assert (ref.cdist(case["queries"], case["table"])[:, 5] ==
          ref.cdist(case["queries"], case["table"])[:, 30]).all()
  items = kernel.place_items(case["table"], case["pop"])
  r5 = kernel.ground(case["queries"], items, k=0, targets=np.full(23, 5)).target_ranks
  r30 = kernel.ground(case["queries"], items, k=0, targets=np.full(23, 30)).target_ranks
  d = ref.cdist(case["queries"], case["table"])
  tied_between = (d[:, 6:30] == d[:, 5:6]).sum(1)
  np.testing.assert_array_equal(r30, r5 + 1 + tied_between)
  assert tied_between.any()  # the data really has ties beyond the duplicate pair
  for i, row in enumerate(got.top_ids):
    row = list(row)
    if 30 in row:
      assert row.index(30) - row.index(5) == 1 + tied_between[i]
      tied = [j for j in row if d[i, j] == d[i, 5]]
      assert tied == sorted(tied)


def test_duplicate_title_targets_take_the_best_rank():
  case = ground_cases.make_case(**ground_cases.CASES["float"])
  items = kernel.place_items(case["table"], case["pop"])
  t = case["targets"]
  single = [kernel.ground(case["queries"], items, k=0, targets=t[:, m]).target_ranks
            for m in range(t.shape[1])]
  both = kernel.ground(case["queries"], items, k=0, targets=t).target_ranks
  expect = np.min([np.where(t[:, m] >= 0, single[m], items.num_items) for m in range(3)], axis=0)
  np.testing.assert_array_equal(both, expect)
  assert (both < single[0]).any()  # some duplicate really is ranked better


def test_grid_equals_single_kernel_per_gamma():
  for name in ("float", "integer"):
    case = ground_cases.make_case(**ground_cases.CASES[name])
    items = kernel.place_items(case["table"], case["pop"])
    grid = kernel.target_ranks_grid(case["queries"], items, case["targets"], ground_cases.GRID,
                                    cf=case["cf"], query_batch=8, gamma_batch=4)
    assert grid.shape == (len(ground_cases.GRID), 23)
    for g, ranks in zip(ground_cases.GRID, grid):
      single = kernel.ground(case["queries"], items, k=0, targets=case["targets"], cf=case["cf"],
                             gamma_pop=float(g[0]), gamma_cf=float(g[1]), query_batch=8)
      np.testing.assert_array_equal(ranks, single.target_ranks, err_msg=f"{name} {g}")
      if name == "float":
        score = _reference(case, float(g[0]), float(g[1]))
        np.testing.assert_array_equal(ranks, ref.best_target_ranks(score, case["targets"]))


def test_gamma_only_reorders_below_the_top_item(single_device):
  """REFERENCE.md: after min-max the nearest item has D' = 0, so injection never changes the top-1."""
  plain = single_device["float", 0.0, 0.0]
  for gp, gc in [(3.0, 0.0), (2.0, 0.5), (0.0, 1.5)]:
    np.testing.assert_array_equal(single_device["float", gp, gc].top_ids[:, 0], plain.top_ids[:, 0])
  assert (single_device["float", 3.0, 0.0].top_ids != plain.top_ids).any()


def test_metrics_match_the_reference_loops(single_device):
  ranks = single_device["float", 3.0, 0.0].target_ranks
  ks = (1, 3, 5, 10, 20)
  got, expect = ranking_metrics(ranks, ks), ref.reference_metrics(ranks, ks)
  for key in expect:
    assert got[key] == pytest.approx(expect[key], abs=1e-12), key


def test_eight_sharded_devices_give_identical_results(single_device, tmp_path):
  out = tmp_path / "sharded.npz"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8 " + os.environ.get("XLA_FLAGS", ""),
             PYTHONPATH=os.pathsep.join([HERE, os.path.dirname(os.path.dirname(HERE))]))
  proc = subprocess.run([sys.executable, os.path.join(HERE, "sharded_worker.py"), str(out)],
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  sharded = np.load(out)
  for tag in ("8x1x1", "2x2x2"):
    for name, kw in ground_cases.CASES.items():
      case = ground_cases.make_case(**kw)
      for gp, gc in _settings(case):
        one = single_device[name, gp, gc]
        np.testing.assert_array_equal(sharded[f"{tag}/{name}/{gp}/{gc}/ids"], one.top_ids)
        np.testing.assert_array_equal(sharded[f"{tag}/{name}/{gp}/{gc}/ranks"], one.target_ranks)
        np.testing.assert_allclose(sharded[f"{tag}/{name}/{gp}/{gc}/scores"], one.top_scores,
                                   rtol=1e-6, atol=1e-7)
      grid = ground_cases.GRID if "cf" in case else ground_cases.GRID[ground_cases.GRID[:, 1] == 0]
      for g, ranks in zip(grid, sharded[f"{tag}/{name}/grid"]):
        score = _reference(case, float(g[0]), float(g[1]))
        np.testing.assert_array_equal(ranks, ref.best_target_ranks(score, case["targets"]))
    beam = ground_cases.make_beam_case()  # several beams per row (test_ground_beams.py)
    for gp, gc in ground_cases.SETTINGS:
      score = ref.beam_keys(beam["queries"], beam["table"], beam["weights"], beam["pop"],
                            beam["cf"], gp, gc)
      np.testing.assert_array_equal(sharded[f"{tag}/beams/{gp}/{gc}/ids"],
                                    ref.top_k(score, ground_cases.K))
      np.testing.assert_array_equal(sharded[f"{tag}/beams/{gp}/{gc}/ranks"],
                                    ref.best_target_ranks(score, beam["targets"]))
    for g, ranks in zip(ground_cases.GRID, sharded[f"{tag}/beams/grid"]):
      score = ref.beam_keys(beam["queries"], beam["table"], beam["weights"], beam["pop"],
                            beam["cf"], float(g[0]), float(g[1]))
      np.testing.assert_array_equal(ranks, ref.best_target_ranks(score, beam["targets"]))


def test_torch_cdist_order_at_gamma_zero():
  """gamma = 0 reproduces the reference exactly: torch.cdist + argsort().argsort() (stable)."""
  torch = pytest.importorskip("torch", reason="torch is a test-only dependency (requirements-test)")
  rng = np.random.default_rng(15)  # a seed whose distances have no float32 near-ties
  e = rng.normal(size=(64, 32)).astype(np.float32)
  q = (e[rng.integers(0, 64, size=16)] + rng.normal(size=(16, 32))).astype(np.float32)
  dist = torch.cdist(torch.from_numpy(q), torch.from_numpy(e), p=2)
  rank = dist.argsort(dim=-1, stable=True).argsort(dim=-1, stable=True).numpy()
  assert ref.min_relative_gap(dist.numpy().astype(np.float64)) > 1e-5
  items = kernel.place_items(e, np.zeros(64, np.float32))
  targets = np.arange(16) * 3
  got = kernel.ground(q, items, k=64, targets=targets)
  np.testing.assert_array_equal(got.top_ids, dist.argsort(dim=-1, stable=True).numpy())
  np.testing.assert_array_equal(got.target_ranks, rank[np.arange(16), targets])
  np.testing.assert_allclose(got.top_scores, np.sort(dist.numpy(), axis=1), rtol=1e-5)


def test_bad_arguments_are_rejected():
  items = kernel.place_items(np.zeros((4, 2)), np.zeros(4))
  with pytest.raises(ValueError, match="k="):
    kernel.ground(np.zeros((1, 2)), items, k=5)
  with pytest.raises(ValueError, match="target ids"):
    kernel.ground(np.zeros((1, 2)), items, k=1, targets=[4])
  with pytest.raises(ValueError, match="no CF"):
    kernel.ground(np.zeros((1, 2)), items, k=1, gamma_cf=1.0)
