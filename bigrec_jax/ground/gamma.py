"""Choosing the injection strength gamma on validation, per K and per metric, and applying it.

REFERENCE.md: popularity gamma over 0, 1, ..., 99; CF gamma over 0, 0.01, ..., 0.99, 1, ..., 99; the
best gamma per K on `valid_5000` is applied to `test_5000`. Each metric's gamma is chosen by
that metric (NDCG@K by NDCG@K, HR@K by HR@K; the reference picked HR's with NDCG, a bug).
Ties between gammas go to the smallest gamma (the first in grid order), i.e. the weakest change.

Both signals at once (an extension, not in the paper) is a coordinate search: each metric's
popularity gamma from the popularity-only search, then the CF gamma over its grid with that
popularity gamma fixed. A full 100 x 199 grid would cost 100x more for little gain.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np

from bigrec_jax.evaluate.metrics import DEFAULT_KS, ranking_metrics
from bigrec_jax.ground import kernel

POP_GAMMAS: tuple[float, ...] = tuple(float(g) for g in range(100))
CF_GAMMAS: tuple[float, ...] = (tuple(round(0.01 * i, 2) for i in range(100))
                                + tuple(float(g) for g in range(1, 100)))


@dataclasses.dataclass
class GammaChoice:
  """Validation curves over one gamma's grid and the (gamma_pop, gamma_cf) pair chosen per metric.

  `vary` names the gamma the grid runs over ("pop" or "cf"); the other one is held at the value
  recorded in each metric's chosen pair (0 for single-signal searches).
  """
  vary: str
  grid: list[float]
  curves: dict[str, list[float]]  # metric -> validation value per grid point
  chosen: dict[str, tuple[float, float]]  # metric -> (gamma_pop, gamma_cf)
  valid: dict[str, float]  # metric -> validation value at its chosen pair

  def to_json(self) -> dict:
    return {"vary": self.vary, "grid": self.grid, "valid_curves": self.curves,
            "chosen": {m: list(g) for m, g in self.chosen.items()}, "valid": self.valid}


def metric_curves(ranks_grid: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[str, list[float]]:
  """metric -> [value at each grid point] from [G, Q] ranks (one metrics function for all)."""
  per_gamma = [ranking_metrics(r, ks) for r in ranks_grid]
  return {m: [d[m] for d in per_gamma] for m in per_gamma[0]}


def pairs(vary: str, grid: Sequence[float], fixed: float = 0.0) -> np.ndarray:
  """[G, 2] (gamma_pop, gamma_cf) pairs running `vary` over grid with the other gamma fixed."""
  g = np.asarray(grid, np.float64)
  other = np.full(len(g), float(fixed))
  if vary == "pop":
    return np.stack([g, other], axis=1)
  if vary == "cf":
    return np.stack([other, g], axis=1)
  raise ValueError(f"vary must be 'pop' or 'cf', got {vary!r}")


def choose(vary: str, grid: Sequence[float], curves: dict[str, list[float]],
           fixed: float = 0.0) -> GammaChoice:
  """Each metric's best grid point by that metric; np.argmax keeps the first (smallest) on ties."""
  pair_grid = pairs(vary, grid, fixed)
  chosen, valid = {}, {}
  for metric, values in curves.items():
    best = int(np.argmax(np.asarray(values)))
    chosen[metric] = (float(pair_grid[best, 0]), float(pair_grid[best, 1]))
    valid[metric] = float(values[best])
  return GammaChoice(vary, [float(x) for x in grid], curves, chosen, valid)


def search(queries, items: kernel.ItemTable, targets, *, vary: str, grid: Sequence[float],
           fixed: float = 0.0, cf=None, ks: Iterable[int] = DEFAULT_KS, invalid_rows=None,
           **kernel_kw) -> GammaChoice:
  """Validation ranks for the whole grid in one kernel call, then each metric's best gamma."""
  ranks = kernel.target_ranks_grid(queries, items, targets, pairs(vary, grid, fixed), cf=cf,
                                   **kernel_kw)
  ranks = _mark_invalid(ranks, invalid_rows, items.num_items)
  return choose(vary, grid, metric_curves(ranks, ks), fixed)


def search_both(queries, items: kernel.ItemTable, targets, cf, pop_choice: GammaChoice, *,
                cf_grid: Sequence[float] = CF_GAMMAS, ks: Iterable[int] = DEFAULT_KS,
                invalid_rows=None, **kernel_kw) -> GammaChoice:
  """Coordinate search: each metric keeps its popularity gamma and gets the best CF gamma.

  One kernel call covers the CF grid at every distinct popularity gamma the metrics chose.
  """
  ks = tuple(ks)
  pops = sorted({g[0] for g in pop_choice.chosen.values()})
  grid = np.concatenate([pairs("cf", cf_grid, fixed=gp) for gp in pops])
  ranks = kernel.target_ranks_grid(queries, items, targets, grid, cf=cf, **kernel_kw)
  ranks = _mark_invalid(ranks, invalid_rows, items.num_items).reshape(len(pops), len(cf_grid), -1)
  by_pop = {gp: choose("cf", cf_grid, metric_curves(r, ks), fixed=gp) for gp, r in zip(pops, ranks)}
  curves, chosen, valid = {}, {}, {}
  for metric, (gp, _) in pop_choice.chosen.items():
    part = by_pop[gp]
    curves[metric] = part.curves[metric]
    chosen[metric], valid[metric] = part.chosen[metric], part.valid[metric]
  return GammaChoice("cf", [float(x) for x in cf_grid], curves, chosen, valid)


def apply(queries, items: kernel.ItemTable, targets, choice: GammaChoice, *, cf=None,
          ks: Iterable[int] = DEFAULT_KS, invalid_rows=None, **kernel_kw) -> dict[str, float]:
  """Test metrics, each at the gamma pair chosen for it on validation (one grid call)."""
  ks = tuple(ks)
  distinct = sorted(set(choice.chosen.values()))
  ranks = kernel.target_ranks_grid(queries, items, targets, np.asarray(distinct), cf=cf,
                                   **kernel_kw)
  ranks = _mark_invalid(ranks, invalid_rows, items.num_items)
  at = {g: ranking_metrics(r, ks) for g, r in zip(distinct, ranks)}
  return {m: at[g][m] for m, g in choice.chosen.items()}


def _mark_invalid(ranks: np.ndarray, invalid_rows, num_items: int) -> np.ndarray:
  """Rows without a usable prediction never hit: rank = num_items."""
  if invalid_rows is None:
    return ranks
  return np.where(np.asarray(invalid_rows, bool)[None, :], num_items, ranks)
