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
  cf_valid = {n: signals.cf_weights(s) for n, s in valid.cf.items()}
  cf_test = {n: signals.cf_weights(s) for n, s in test.cf.items()}

  def split_args(split: SplitInputs):
    return split.queries, items, split.predictions.targets

  def beam_kw(split: SplitInputs):
    return {} if split.beam_weights is None else {"beam_weights": split.beam_weights}

  def ranked(split: SplitInputs, cf=None, gp=0.0, gc=0.0):
    out = kernel.ground(split.queries, items, k=top_k, targets=split.predictions.targets, cf=cf,
                        gamma_pop=gp, gamma_cf=gc, query_batch=query_batch, **beam_kw(split))
    empty = split.predictions.empty
    ranks = np.where(empty, items.num_items, out.target_ranks)
    return ranking_metrics(ranks, ks), np.where(empty[:, None], -1, out.top_ids), ranks

  methods: dict[str, dict] = {}
  choices: dict[str, gamma_lib.GammaChoice] = {}
  tops: dict[str, np.ndarray] = {}
  test_ranks: dict[str, np.ndarray] = {}

  valid_plain, _, _ = ranked(valid)
  test_plain, tops[PLAIN], test_ranks[PLAIN] = ranked(test)
  methods[PLAIN] = {"valid": valid_plain, "test": test_plain}

  def tuned(name: str, choice: gamma_lib.GammaChoice, cf_t=None):
    test_metrics = gamma_lib.apply(*split_args(test), choice, cf=cf_t, ks=ks,
                                   invalid_rows=test.predictions.empty, **grid_kw,
                                   **beam_kw(test))
    methods[name] = {"valid": choice.valid, "test": test_metrics,
                     "gammas": {m: {"pop": g[0], "cf": g[1]} for m, g in choice.chosen.items()},
                     "search": choice.to_json()}
    choices[name] = choice
    gp, gc = choice.chosen[plot_metric]
    _, tops[name], test_ranks[name] = ranked(test, cf_t, gp, gc)

  pop_choice = gamma_lib.search(*split_args(valid), vary="pop", grid=pop_grid, ks=ks,
                                invalid_rows=valid.predictions.empty, **grid_kw, **beam_kw(valid))
  tuned(POP, pop_choice)
  for source in sorted(cf_valid):
    cf_choice = gamma_lib.search(*split_args(valid), vary="cf", grid=cf_grid, cf=cf_valid[source],
                                 ks=ks, invalid_rows=valid.predictions.empty, **grid_kw,
                                 **beam_kw(valid))
    tuned(f"bigrec+cf:{source}", cf_choice, cf_test[source])
    if both:
      both_choice = gamma_lib.search_both(*split_args(valid), cf_valid[source], pop_choice,
                                          cf_grid=cf_grid, ks=ks,
                                          invalid_rows=valid.predictions.empty, **grid_kw,
                                          **beam_kw(valid))
      tuned(f"bigrec+pop+cf:{source}", both_choice, cf_test[source])

  metrics = {
      "num_items": items.num_items,
      "ks": list(ks),
      "counts": {"valid": valid.counts(), "test": test.counts()},
      "gamma_grids": {"pop": [float(g) for g in pop_grid], "cf": [float(g) for g in cf_grid]},
      "plot_metric": plot_metric,
      "methods": methods,
  }
  return GroundingResult(metrics, choices, tops, test_ranks)
