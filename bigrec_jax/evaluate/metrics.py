"""The one metrics function: NDCG@K and HR@K from 0-based all-rank positions (REFERENCE.md)."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

DEFAULT_KS = (1, 3, 5, 10, 20, 50)


def ranking_metrics(ranks: Sequence[int] | np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict:
  """{'NDCG@K': mean 1/log2(rank+2) if rank < K else 0, 'HR@K': mean rank < K} over rows."""
  ranks = np.asarray(ranks, dtype=np.int64)
  if ranks.size == 0:
    raise ValueError("ranking_metrics needs at least one row")
  gains = 1.0 / np.log2(ranks.astype(np.float64) + 2.0)
  out = {}
  for k in ks:
    hit = ranks < k
    out[f"NDCG@{k}"] = float(np.where(hit, gains, 0.0).mean())
    out[f"HR@{k}"] = float(hit.mean())
  return out


def row_ndcg(ranks: Sequence[int] | np.ndarray, k: int) -> np.ndarray:
  """[rows] NDCG@k of each row: 1/log2(rank+2) when rank < k, else 0 (the mean is NDCG@k)."""
  ranks = np.asarray(ranks, dtype=np.int64)
  return np.where(ranks < k, 1.0 / np.log2(ranks.astype(np.float64) + 2.0), 0.0)


def paired_bootstrap(ranks_a, ranks_b, k: int = 10, resamples: int = 10_000,
                     seed: int = 0) -> dict:
  """NDCG@k of A minus B on the same rows, with a paired bootstrap 95% percentile interval.

  Rows are resampled with replacement, the same draw for both methods (the pairing is what makes
  the interval narrow when two methods win and lose on the same rows).
  """
  a, b = row_ndcg(ranks_a, k), row_ndcg(ranks_b, k)
  if a.shape != b.shape or a.ndim != 1 or a.size == 0:
    raise ValueError(f"paired_bootstrap needs two rank lists over the same rows, got {a.shape} "
                     f"and {b.shape}")
  diff = a - b
  draws = np.random.default_rng(seed).integers(0, diff.size, size=(resamples, diff.size))
  means = diff[draws].mean(axis=1)
  low, high = np.percentile(means, [2.5, 97.5])
  return {"metric": f"NDCG@{k}", "diff": float(diff.mean()), "low": float(low),
          "high": float(high), "rows": int(diff.size), "resamples": resamples}
