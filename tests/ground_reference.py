"""A plain numpy restatement of the reference's grounding (cdist, min-max, argsort) for tests."""
from __future__ import annotations

import math

import numpy as np


def cdist(q: np.ndarray, e: np.ndarray) -> np.ndarray:
  """Float64 L2 distances by explicit differences (independent of the kernel's matmul trick)."""
  q, e = np.asarray(q, np.float64), np.asarray(e, np.float64)
  return np.sqrt(((q[:, None, :] - e[None, :, :]) ** 2).sum(-1))


def minmax_rows(x: np.ndarray) -> np.ndarray:
  lo, hi = x.min(1, keepdims=True), x.max(1, keepdims=True)
  return (x - lo) / np.where(hi > lo, hi - lo, 1.0)


def keys(q, e, pop=None, cf=None, gamma_pop=0.0, gamma_cf=0.0) -> np.ndarray:
  """Reference score matrix [Q, N]: plain distance at gamma 0, else D' * (1+p)^-g * (1+c)^-g."""
  d = cdist(q, e)
  if gamma_pop == 0 and gamma_cf == 0:
    return d
  s = minmax_rows(d)
  if pop is not None:
    s = s * (1.0 + np.asarray(pop, np.float64))[None, :] ** (-gamma_pop)
  if cf is not None:
    s = s * (1.0 + np.asarray(cf, np.float64)) ** (-gamma_cf)
  return s


def ranks_of_all(score: np.ndarray) -> np.ndarray:
  """rank[i, j] = position of item j in row i sorted ascending (stable: lower id first on ties)."""
  return np.argsort(np.argsort(score, axis=1, kind="stable"), axis=1, kind="stable")


def best_target_ranks(score: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """The reference's loop: the minimum rank over every id sharing the target's title."""
  rank = ranks_of_all(score)
  out = []
  for i, row in enumerate(np.atleast_2d(np.asarray(targets).T).T):
    min_id = 1 << 30
    for t in row:
      if t >= 0 and rank[i, t] < min_id:
        min_id = int(rank[i, t])
    out.append(min_id)
  return np.asarray(out)


def top_k(score: np.ndarray, k: int) -> np.ndarray:
  return np.argsort(score, axis=1, kind="stable")[:, :k]


def reference_metrics(ranks, ks) -> dict:
  """NDCG/HR as the reference scripts accumulate them (natural log, divided by 1/log 2)."""
  out = {}
  for k in ks:
    s = hits = 0.0
    for r in ranks:
      if r < k:
        s += 1.0 / math.log(r + 2)
        hits += 1
    out[f"NDCG@{k}"] = s / len(ranks) / (1.0 / math.log(2))
    out[f"HR@{k}"] = hits / len(ranks)
  return out


def min_relative_gap(score: np.ndarray, upto: int | None = None) -> float:
  """Smallest gap between neighbouring sorted scores of a row, relative to the row's range."""
  s = np.sort(score, axis=1)
  if upto is not None:
    s = s[:, :upto + 1]
  span = score.max(1, keepdims=True) - score.min(1, keepdims=True)
  return float((np.diff(s, axis=1) / span).min())


def beam_keys(q, e, weights, pop=None, cf=None, gamma_pop=0.0, gamma_cf=0.0) -> np.ndarray:
  """Several beams per row ([Q, B, D], weights [Q, B]): combined = sum_b w_b * minmax(D_b);
  gamma 0: combined itself, else minmax(combined) * (1+p)^-g * (1+c)^-g."""
  q = np.asarray(q, np.float64)
  w = np.asarray(weights, np.float64)
  comb = np.zeros((q.shape[0], len(e)))
  for b in range(q.shape[1]):
    comb += w[:, b:b + 1] * minmax_rows(cdist(q[:, b], e))
  if gamma_pop == 0 and gamma_cf == 0:
    return comb
  s = minmax_rows(comb)
  if pop is not None:
    s = s * (1.0 + np.asarray(pop, np.float64))[None, :] ** (-gamma_pop)
  if cf is not None:
    s = s * (1.0 + np.asarray(cf, np.float64)) ** (-gamma_cf)
  return s
