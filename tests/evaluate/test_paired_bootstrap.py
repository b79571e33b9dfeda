"""The paired bootstrap of NDCG@10 differences, on hand cases whose answer is known exactly."""
from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest

from bigrec_jax.evaluate import compare
from bigrec_jax.evaluate.metrics import paired_bootstrap, ranking_metrics, row_ndcg
from bigrec_jax.files import UserError


def test_row_ndcg_averages_to_the_metric():
  ranks = [0, 1, 9, 10, 500]
  assert row_ndcg(ranks, 10).tolist() == [1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0, 0.0]
  assert row_ndcg(ranks, 10).mean() == pytest.approx(ranking_metrics(ranks, [10])["NDCG@10"])


def test_two_rows_interval_is_the_exact_resampling_distribution():
  # A hits row 0 at rank 0, B misses both: per-row differences [1, 0]. Resampled means of two
  # rows are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 2.5/97.5 percentiles are 0 and 1.
  out = paired_bootstrap([0, 50], [50, 50], k=10, resamples=4000, seed=1)
  assert out["diff"] == 0.5 and out["low"] == 0.0 and out["high"] == 1.0 and out["rows"] == 2


def test_three_rows_quantiles_match_enumeration():
  a, b = [0, 2, 30], [1, 30, 30]
  diff = row_ndcg(a, 10) - row_ndcg(b, 10)
  means = np.sort([diff[list(p)].mean() for p in itertools.product(range(3), repeat=3)])
  out = paired_bootstrap(a, b, k=10, resamples=200_000, seed=0)
  assert out["diff"] == pytest.approx(diff.mean())
  # every resampled mean is one of the 27 equally likely values: the percentiles must be too
  assert np.min(np.abs(means - out["low"])) < 1e-12 and np.min(np.abs(means - out["high"])) < 1e-12
  assert out["low"] == pytest.approx(np.percentile(means, 2.5, method="inverted_cdf"), abs=0.06)


def test_pairing_narrows_the_interval():
  # B is A shifted one rank down on every row: a consistent win for A, and the paired interval
  # excludes 0 although the two methods' own spreads overlap.
  rng = np.random.default_rng(0)
  a = rng.integers(0, 12, size=1000)
  out = paired_bootstrap(a, a + 1, k=10)
  assert out["low"] > 0 and out["high"] > out["low"]
  same = paired_bootstrap(a, a, k=10)
  assert same["diff"] == same["low"] == same["high"] == 0.0


def test_shape_mismatch_is_refused():
  with pytest.raises(ValueError, match="same rows"):
    paired_bootstrap([0, 1], [0], k=10)


def _write(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f)


def test_paired_comparisons_read_the_workdir(tmp_path):
  w = str(tmp_path)
  _write(f"{w}/eval/test_ranks.json", {"bigrec": [0, 1, 3], "bigrec+pop": [0, 1, 2]})
  _write(f"{w}/baselines/mostpop/test_ranks.json", [5, 0, 40])
  _write(f"{w}/baselines/sasrec_fewshot/test_ranks.json", [50, 50, 50])
  got = {(c["method"], c["baseline"]): c for c in compare.paired_comparisons(w)}
  assert set(got) == {("bigrec", "sasrec_fewshot"), ("bigrec+pop", "mostpop"), ("bigrec", "mostpop")}
  want = (row_ndcg([0, 1, 2], 10) - row_ndcg([5, 0, 40], 10)).mean()
  assert got[("bigrec+pop", "mostpop")]["diff"] == pytest.approx(want)
  table = compare.paired_table(list(got.values()))
  assert "| bigrec | sasrec_fewshot |" in table and "better" in table
  _write(f"{w}/baselines/mostpop/test_ranks.json", [5, 0])
  with pytest.raises(UserError, match="same rows"):
    compare.paired_comparisons(w)
