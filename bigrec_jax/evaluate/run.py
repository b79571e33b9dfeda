"""`evaluate_predictions`: the whole evaluation stage behind launch/evaluate.py.

read and check every input -> embed the catalog (cached) and the predictions with the base model
-> ground plainly, with popularity and with each CF source (gammas tuned on valid) -> write the
plots, test_top_items.json and, last, metrics.json (all atomically). Every input is checked
before the model is loaded, so bad input fails in seconds and leaves no partial output.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Sequence

import numpy as np

from bigrec_jax import assets, files, parallel
from bigrec_jax.evaluate import grounding, inputs, report
from bigrec_jax.evaluate.metrics import DEFAULT_KS
from bigrec_jax.files import UserError
from bigrec_jax.ground import gamma as gamma_lib


@dataclasses.dataclass
class EvaluateOptions:
  data_dir: str  # prepared-data directory (items.tsv, popularity.json)
  valid_predictions: str  # generated rows with `predict` for valid_5000
  test_predictions: str
  out_dir: str
  model: str | None = None  # .gguf file or HF directory; None: the embedded SmolLM2
  tokenizer: str | None = None  # tokenizer directory for a model without one (None: its own)
  cf_names: Sequence[str] = ()  # one name per CF source, e.g. ("sasrec",)
  cf_valid_scores: Sequence[str] = ()  # [valid rows, N] .npy per source
  cf_test_scores: Sequence[str] = ()
  ks: Sequence[int] = DEFAULT_KS
  beam: int = 0  # which returned sequence to ground (0: the best beam, as the reference)
  beams: int = 1  # > 1: ground predict[0..beams-1] together, weighted by beam rank (extension)
  pop_gammas: Sequence[float] = gamma_lib.POP_GAMMAS
  cf_gammas: Sequence[float] = gamma_lib.CF_GAMMAS
  both: bool = True  # also popularity + CF together (an extension)
  embedding_cache: str | None = None  # default: $BIGREC_HOME/embeddings
  embed_batch_size: int = 64
  query_batch: int | None = None  # None: from the kernel's memory budget
  gamma_batch: int = 4
  mesh_shape: Sequence[int] = (-1, 1, 1)
  dtype: str = "float32"
  kernels: str = "auto"  # the embedding model's products and attention (model.kernels, ops.py)
  progress: bool = True


def _check(opts: EvaluateOptions) -> None:
  """What the launcher gives (the config's fields are config.check's: ks, beams, grids, ...)."""
  n = len(opts.cf_names)
  if len(opts.cf_valid_scores) != n or len(opts.cf_test_scores) != n:
    raise UserError(f"--cf_names ({n}), --cf_valid_scores ({len(opts.cf_valid_scores)}) and "
                    f"--cf_test_scores ({len(opts.cf_test_scores)}) must list one entry per source")
  if len(set(opts.cf_names)) != n:
    raise UserError(f"--cf_names has duplicates: {list(opts.cf_names)}")
  if opts.beam < 0:
    raise UserError(f"--beam must be >= 0, got {opts.beam}")
  if opts.beams > 1 and opts.beam != 0:
    raise UserError(f"--beams={opts.beams} grounds predict[0..{opts.beams - 1}]; it cannot be "
                    f"combined with --beam={opts.beam}")


class _Grounder:
  """What grounding any prediction rows needs, loaded once: catalog, popularity, base model,
  the catalog's embeddings (cached) and the mesh."""

  def __init__(self, opts: EvaluateOptions, model=None, log=print):
    self.opts = opts
    self.catalog = inputs.read_catalog(opts.data_dir)
    self.counts = inputs.read_popularity(opts.data_dir, self.catalog.num_items)
    if max(opts.ks) > self.catalog.num_items:
      raise UserError(f"--ks {list(opts.ks)}: K cannot exceed the {self.catalog.num_items} "
                      "catalog items")
    self.log = log
    self.mesh = parallel.make_mesh(opts.mesh_shape)
    self.model = model
    self.table: np.ndarray | None = None  # [N, D] catalog embeddings, once `load` ran

  def load(self) -> None:
    """Loads the base model and embeds the catalog (after every input has been checked)."""
    from bigrec_jax.ground import embed

    if self.table is not None:
      return
    if self.model is None:
      from bigrec_jax.model import load_model

      self.model = load_model(self.opts.model, dtype=self.opts.dtype, mesh=self.mesh,
                              tokenizer=self.opts.tokenizer, kernels=self.opts.kernels)
    self.embed_kw = dict(batch_size=self.opts.embed_batch_size, mesh=self.mesh,
                         progress=self.opts.progress)
    cache = self.opts.embedding_cache or os.path.join(assets.home(), "embeddings")
    titles = [inputs.clean_text(t) for t in self.catalog.titles]
    self.table = embed.catalog_embeddings(self.model, titles, cache, log=self.log,
                                          **self.embed_kw)

  def split(self, name: str, preds: inputs.Predictions, cf: dict) -> grounding.SplitInputs:
    """The split's predictions embedded by the base model (one query per row, or per beam)."""
    from bigrec_jax.ground import embed

    desc = f"embedding {name} predictions"
    if preds.beam_texts is None:
      queries = embed.embed_texts(self.model, preds.texts, desc=desc, **self.embed_kw)
      return grounding.SplitInputs(name, queries, preds, cf)
    queries, weights = _embed_beams(embed, self.model, preds, desc=desc, **self.embed_kw)
    return grounding.SplitInputs(name, queries, preds, cf, beam_weights=weights)

  def grid_kw(self) -> dict:
    o = self.opts
    return dict(ks=o.ks, mesh=self.mesh, pop_grid=o.pop_gammas, cf_grid=o.cf_gammas, both=o.both,
                query_batch=o.query_batch, gamma_batch=o.gamma_batch)


def evaluate_predictions(opts: EvaluateOptions, model=None, log=print) -> dict:
  """Runs the evaluation stage and returns metrics.json's content. `model`: a preloaded one."""
  _check(opts)
  start = time.time()
  g = _Grounder(opts, model, log)
  catalog = g.catalog
  preds = {s: inputs.read_predictions(p, catalog, opts.beam, opts.beams)
           for s, p in (("valid", opts.valid_predictions), ("test", opts.test_predictions))}
  cf = {"valid": {}, "test": {}}
  for name, v, t in zip(opts.cf_names, opts.cf_valid_scores, opts.cf_test_scores):
    cf["valid"][name] = inputs.read_cf_scores(v, preds["valid"], catalog.num_items)
    cf["test"][name] = inputs.read_cf_scores(t, preds["test"], catalog.num_items)
  g.load()
  splits = {s: g.split(s, p, cf[s]) for s, p in preds.items()}
  embedded = time.time()

  result = grounding.evaluate_grounding(g.table, g.counts, splits["valid"], splits["test"],
                                        **g.grid_kw())
  result.metrics["inputs"] = {
      "data_dir": files.abspath(opts.data_dir), "model": g.model.source, "beam": opts.beam,
      "beams": opts.beams,
      "beam_weighting": None if opts.beams == 1 else BEAM_WEIGHTING,
      "valid_predictions": files.abspath(opts.valid_predictions),
      "test_predictions": files.abspath(opts.test_predictions),
      "cf_scores": {n: {"valid": files.abspath(v), "test": files.abspath(t)} for n, v, t in
                    zip(opts.cf_names, opts.cf_valid_scores, opts.cf_test_scores)}}
  result.metrics["seconds"] = {"embedding": round(embedded - start, 2),
                               "grounding": round(time.time() - embedded, 2)}
  files.write_json(os.path.join(opts.out_dir, "test_ranks.json"),
                   {m: r.tolist() for m, r in result.test_ranks.items()}, indent=None)
  files.write_json(os.path.join(opts.out_dir, "test_top_items.json"),
                   _top_items(preds["test"], result, catalog), indent=None)
  report.write_report(opts.out_dir, result, g.counts, preds["test"].target_ids)
  log(report.format_table(result.metrics))
  log(f"[evaluate] wrote {os.path.join(opts.out_dir, 'metrics.json')} and plots")
  return result.metrics


def valid_scorer(opts: EvaluateOptions, method: str, metric: str, model=None, log=print
                 ) -> Callable[[list[dict]], float]:
  """rows -> the grounded `method`'s valid `metric` of those generated rows (gammas tuned on them,
  as the evaluation stage tunes them): how the pipeline chooses a decoding setting (alpha) by the
  metric it reports, on valid rows only. The rows are those of `opts.valid_predictions`' input
  (CF scores are read for them); the base model and catalog embeddings load on the first call.
  """
  _check(opts)
  g = _Grounder(opts, model, log)
  names = {grounding.PLAIN, grounding.POP} | {
      f"{p}{n}" for n in opts.cf_names for p in ("bigrec+cf:", "bigrec+pop+cf:")}
  if method not in names:
    raise UserError(f"decoding is chosen by {method!r}, which this evaluation does not compute: "
                    f"choose from {sorted(names)}")

  def score(rows: list[dict]) -> float:
    g.load()
    preds = inputs.predictions_from_rows(rows, g.catalog, opts.beam, opts.beams)
    cf = {n: inputs.read_score_matrix(v, preds.num_rows, g.catalog.num_items,
                                      opts.valid_predictions)
          for n, v in zip(opts.cf_names, opts.cf_valid_scores)}
    values = grounding.valid_metrics(g.table, g.counts, g.split("valid", preds, cf),
                                     **g.grid_kw())[method]
    if metric not in values:
      raise UserError(f"decoding is chosen by {metric!r}, not among {sorted(values)}")
    return float(values[metric])

  return score


BEAM_WEIGHTING = ("sum over beams r < beams of w_r * minmax_row(D_r), w_r = (1/(r+1)) / sum over "
                  "the row's non-empty beams; then the usual min-max and reweighting")


def _embed_beams(embed, model, preds: inputs.Predictions, **embed_kw):
  """[Q, beams, D] embeddings of every non-empty beam (zeros elsewhere) and their rank weights."""
  from bigrec_jax.ground import signals

  present = preds.beam_present()
  flat = [t for row in preds.beam_texts for t in row if t]
  vecs = embed.embed_texts(model, flat or [""], **embed_kw)
  queries = np.zeros(present.shape + (vecs.shape[1],), np.float32)
  queries[present] = vecs[:len(flat)]
  return queries, signals.beam_rank_weights(present)


def _top_items(preds: inputs.Predictions, result: grounding.GroundingResult,
               catalog: inputs.Catalog, top_n: int = 10) -> list[dict]:
  """Per test row: the grounded text, the target and each method's top items (for examples)."""
  out = []
  for i, text in enumerate(preds.texts):
    row = {"user_id": preds.rows[i].get("user_id"), "predict": text,
           "target_item_id": int(preds.target_ids[i]),
           "target": catalog.titles[preds.target_ids[i]]}
    for method, top in result.test_top_ids.items():
      row[method] = [int(j) for j in top[i, :top_n] if j >= 0]
    out.append(row)
  return out
