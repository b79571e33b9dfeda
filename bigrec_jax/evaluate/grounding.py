"""BIGRec step 2 evaluated end to end from embeddings: plain, +popularity, +CF (and both).

`evaluate_grounding` takes already-embedded predictions and catalog (see ground/embed.py for
producing them) and returns every number metrics.json holds, plus the test top-K per method for
plots and examples. Gammas are chosen on the validation split and applied to the test split.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np
from jax.sharding import Mesh

from bigrec_jax.evaluate.inputs import Predictions
from bigrec_jax.evaluate.metrics import DEFAULT_KS, ranking_metrics
from bigrec_jax.ground import gamma as gamma_lib
from bigrec_jax.ground import kernel, signals

PLAIN = "bigrec"
POP = "bigrec+pop"


@dataclasses.dataclass
class SplitInputs:
  """One split (valid or test): its prediction embeddings, rows and CF scores by source name.

  Several beams per row: queries [Q, beams, D] and beam_weights [Q, beams] (zero for a missing
  beam; signals.beam_rank_weights), grounded by the kernel's weighted per-beam distance.
  """
  name: str
  queries: np.ndarray  # [Q, D] or [Q, beams, D]
  predictions: Predictions
  cf: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> raw [Q, N]
  beam_weights: np.ndarray | None = None  # [Q, beams] when queries have a beam axis

  def counts(self) -> dict:
    p = self.predictions
    return {"rows": p.num_rows, "empty_predictions": int(p.empty.sum()),
            "rows_with_duplicate_title_targets": int(((p.targets >= 0).sum(1) > 1).sum())}


@dataclasses.dataclass
class GroundingResult:
  metrics: dict  # JSON-ready: every number, chosen gammas, counts
  choices: dict[str, gamma_lib.GammaChoice]  # method -> validation search
  test_top_ids: dict[str, np.ndarray]  # method -> [Q, K] test top-K (-1 rows: empty prediction)
  # method -> [Q] 0-based test ranks at the gammas chosen for `plot_metric` (paired comparisons)
  test_ranks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def _searches(items: kernel.ItemTable, valid: SplitInputs, *, ks, pop_grid, cf_grid, both: bool,
              grid_kw: dict) -> dict[str, tuple[gamma_lib.GammaChoice, str | None]]:
  """Each injected method's gamma search on the valid split: name -> (choice, its CF source)."""
  valid_args = (valid.queries, items, valid.predictions.targets)
  kw = dict(ks=ks, invalid_rows=valid.predictions.empty, **grid_kw, **_beam_kw(valid))
  pop_choice = gamma_lib.search(*valid_args, vary="pop", grid=pop_grid, **kw)
  out = {POP: (pop_choice, None)}
  for source in sorted(valid.cf):
    cf = signals.cf_weights(valid.cf[source])
    out[f"bigrec+cf:{source}"] = (
        gamma_lib.search(*valid_args, vary="cf", grid=cf_grid, cf=cf, **kw), source)
    if both:
      out[f"bigrec+pop+cf:{source}"] = (
          gamma_lib.search_both(*valid_args, cf, pop_choice, cf_grid=cf_grid, **kw), source)
  return out


def _beam_kw(split: SplitInputs) -> dict:
  return {} if split.beam_weights is None else {"beam_weights": split.beam_weights}


def _plain_ranks(split: SplitInputs, items: kernel.ItemTable, top_k: int, query_batch, cf=None,
                 gp: float = 0.0, gc: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """([Q] 0-based target ranks, [Q, top_k] top ids) of one split at one gamma pair."""
  out = kernel.ground(split.queries, items, k=top_k, targets=split.predictions.targets, cf=cf,
                      gamma_pop=gp, gamma_cf=gc, query_batch=query_batch, **_beam_kw(split))
  empty = split.predictions.empty
  return (np.where(empty, items.num_items, out.target_ranks),
          np.where(empty[:, None], -1, out.top_ids))


def valid_metrics(item_embeddings: np.ndarray, popularity_counts: np.ndarray,
                  valid: SplitInputs, *, ks: Iterable[int] = DEFAULT_KS, mesh: Mesh | None = None,
                  pop_grid: Sequence[float] = gamma_lib.POP_GAMMAS,
                  cf_grid: Sequence[float] = gamma_lib.CF_GAMMAS, both: bool = True,
                  query_batch: int | None = None, gamma_batch: int = 4
                  ) -> dict[str, dict[str, float]]:
  """method -> metric -> its valid value (at the gamma chosen for that metric, as in
  `evaluate_grounding`): the score a decoding setting is chosen by, before any test row is seen.
  """
  ks = tuple(sorted(ks))
  items = kernel.place_items(item_embeddings, signals.popularity_weights(popularity_counts), mesh)
  ranks, _ = _plain_ranks(valid, items, min(max(ks), items.num_items), query_batch)
  out = {PLAIN: ranking_metrics(ranks, ks)}
  searches = _searches(items, valid, ks=ks, pop_grid=pop_grid, cf_grid=cf_grid, both=both,
                       grid_kw=dict(query_batch=query_batch, gamma_batch=gamma_batch))
  out.update({name: choice.valid for name, (choice, _) in searches.items()})
  return out


def evaluate_grounding(item_embeddings: np.ndarray, popularity_counts: np.ndarray,
                       valid: SplitInputs, test: SplitInputs, *, ks: Iterable[int] = DEFAULT_KS,
                       mesh: Mesh | None = None, pop_grid: Sequence[float] = gamma_lib.POP_GAMMAS,
                       cf_grid: Sequence[float] = gamma_lib.CF_GAMMAS, both: bool = True,
                       query_batch: int | None = None, gamma_batch: int = 4,
                       plot_metric: str | None = None) -> GroundingResult:
  """Grounds both splits plainly, tunes each injection's gammas on valid, applies them to test.

  `plot_metric` (default NDCG@10, else NDCG at the largest K) picks whose chosen gamma gives the
  test top-K kept for plots and examples.
  """
  ks = tuple(sorted(ks))
  if set(valid.cf) != set(test.cf):
    raise ValueError(f"CF sources differ between valid {sorted(valid.cf)} and test {sorted(test.cf)}")
  items = kernel.place_items(item_embeddings, signals.popularity_weights(popularity_counts), mesh)
  top_k = min(max(ks), items.num_items)
  plot_metric = plot_metric or ("NDCG@10" if 10 in ks else f"NDCG@{ks[-1]}")
  grid_kw = dict(query_batch=query_batch, gamma_batch=gamma_batch)

  def ranked(split: SplitInputs, cf=None, gp=0.0, gc=0.0):
    ranks, top = _plain_ranks(split, items, top_k, query_batch, cf, gp, gc)
    return ranking_metrics(ranks, ks), top, ranks

  methods: dict[str, dict] = {}
  choices: dict[str, gamma_lib.GammaChoice] = {}
  tops: dict[str, np.ndarray] = {}
  test_ranks: dict[str, np.ndarray] = {}

  valid_plain, _, _ = ranked(valid)
  test_plain, tops[PLAIN], test_ranks[PLAIN] = ranked(test)
  methods[PLAIN] = {"valid": valid_plain, "test": test_plain}
  searches = _searches(items, valid, ks=ks, pop_grid=pop_grid, cf_grid=cf_grid, both=both,
                       grid_kw=grid_kw)
  for name, (choice, source) in searches.items():
    cf_t = None if source is None else signals.cf_weights(test.cf[source])
    test_metrics = gamma_lib.apply(test.queries, items, test.predictions.targets, choice, cf=cf_t,
                                   ks=ks, invalid_rows=test.predictions.empty, **grid_kw,
                                   **_beam_kw(test))
    methods[name] = {"valid": choice.valid, "test": test_metrics,
                     "gammas": {m: {"pop": g[0], "cf": g[1]} for m, g in choice.chosen.items()},
                     "search": choice.to_json()}
    choices[name] = choice
    gp, gc = choice.chosen[plot_metric]
    _, tops[name], test_ranks[name] = ranked(test, cf_t, gp, gc)

  metrics = {
      "num_items": items.num_items,
      "ks": list(ks),
      "counts": {"valid": valid.counts(), "test": test.counts()},
      "gamma_grids": {"pop": [float(g) for g in pop_grid], "cf": [float(g) for g in cf_grid]},
      "plot_metric": plot_metric,
      "methods": methods,
  }
  return GroundingResult(metrics, choices, tops, test_ranks)
