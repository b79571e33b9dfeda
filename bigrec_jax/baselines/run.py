"""One baseline run: load prepared data, train (or count), score, export, write metrics.json.

Outputs in the workdir (every file written atomically; metrics.json last, so its presence means
the run is complete):
- scores_valid_5000.npy, scores_test_5000.npy: float32 [rows, num_items]; row i scores every
  catalog item for row i of valid_5000.json / test_5000.json (higher = better), the
  collaborative signal for CF injection (launch/evaluate.py --cf_valid_scores/--cf_test_scores);
- metrics.json: the grounding stage's layout, {"num_items", "ks", "counts": {split: {"rows",
  "empty_predictions"}}, "methods": {model: {"valid": {"NDCG@K", "HR@K"}, "test": {...}}}},
  ranked over the whole catalog;
- run.json: model, settings (DROS: backbone and DROS settings), best epoch, epochs, seconds and
  the per-epoch validation curve;
- checkpoints/: orbax checkpoint of the best parameters (trained models only; DROS: its
  backbone's, `models.build_from_config` rebuilds the module).
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, Mapping

import numpy as np

from bigrec_jax import files
from bigrec_jax.baselines import data as data_lib
from bigrec_jax.baselines import dros, models, trainer
from bigrec_jax.evaluate.metrics import DEFAULT_KS, ranking_metrics
from bigrec_jax.files import UserError


def scores_path(workdir: str, split: str) -> str:
  """Where the score matrix of `split` ('valid' or 'test') is written."""
  return os.path.join(workdir, f"scores_{data_lib.SPLITS[split]}.npy")


def all_rank(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """0-based rank: the number of items scoring strictly higher than the target (none excluded)."""
  target_scores = scores[np.arange(len(targets)), targets]
  return (scores > target_scores[:, None]).sum(axis=1)


def metrics_json(model: str, ranks: Mapping[str, np.ndarray], num_items: int,
                 ks=DEFAULT_KS) -> dict:
  """The grounding stage's metrics.json layout, with this model as the one method."""
  return {
      "num_items": num_items,
      "ks": list(ks),
      "counts": {s: {"rows": int(len(r)), "empty_predictions": 0} for s, r in ranks.items()},
      "methods": {model: {s: ranking_metrics(r, ks) for s, r in ranks.items()}},
  }


def train_and_evaluate(config: Mapping[str, Any], *, model: str, data_dir: str, workdir: str,
                       sample: int = -1, seed: int = 0,
                       log: Callable[[str], None] | None = None) -> dict:
  """Trains `model` on the prepared data (or its few-shot sample), exports scores, returns metrics.

  config: `max_len`, `train` (TrainSettings fields) and one section per model (its fields);
  `dros` (DROSSettings fields) names the backbone whose section DROS trains.
  Returns metrics.json's content.
  """
  log = log or functools.partial(print, flush=True)  # progress shows up in piped logs too
  if model not in models.MODELS:
    raise UserError(f"--model={model}: choose one of {', '.join(models.MODELS)}")
  start = time.perf_counter()
  if model != "mostpop":  # config errors before the data loads (and before workdir exists)
    trainer.TrainSettings.from_mapping(dict(config["train"]), seed=seed)
  data = data_lib.load(data_dir, max_len=int(config["max_len"]), sample=sample, seed=seed)
  log(f"[baseline] {model}: {len(data.train)} training rows, {data.num_items} items, "
      f"{len(data.valid)} valid / {len(data.test)} test rows")
  info: dict[str, Any] = {"model": model, "data_dir": files.abspath(data_dir), "sample": sample,
                          "seed": seed, "train_rows": len(data.train), "num_items": data.num_items}
  if model == "mostpop":
    scores = {s: np.broadcast_to(data.popularity, (len(data.split(s)), data.num_items))
              for s in data_lib.SPLITS}
    ranks = {s: all_rank(scores[s], data.split(s).targets) for s in data_lib.SPLITS}
  else:
    backbone = models.backbone_name(model, config)
    hparams = dict(config.get(backbone, {}))
    module = models.build_model(backbone, data.num_items, data.max_len, hparams)
    objective = None  # the trainer's softmax cross-entropy
    if model == "dros":
      dros_settings = dros.DROSSettings.from_mapping(config.get("dros"))
      counts = dros.target_counts(data.train.targets, data.num_items)
      objective = dros.make_objective(dros_settings, counts)
      info.update(backbone=backbone, dros=vars(dros_settings))
    settings = trainer.TrainSettings.from_mapping(dict(config["train"]), seed=seed)
    files.makedirs(workdir)  # only once the config is known good
    mesh = trainer.local_mesh()
    scorer = trainer.Scorer(module, mesh, settings.eval_batch_size)
    result = trainer.train(module, data, settings, os.path.join(workdir, "checkpoints"),
                           mesh=mesh, scorer=scorer, objective=objective, log=log)
    scores, ranks = {}, {}
    for s in data_lib.SPLITS:
      scores[s], ranks[s] = scorer(result.params, data.split(s), keep_scores=True)
    info.update(hparams=hparams, train=vars(settings), best_epoch=result.best_epoch,
                epochs=result.epochs_run, train_seconds=result.seconds, curve=result.history)
  for s in data_lib.SPLITS:
    files.write_npy(scores_path(workdir, s), np.asarray(scores[s], np.float32))
  metrics = metrics_json(model, ranks, data.num_items)
  info["seconds"] = time.perf_counter() - start
  files.write_json(os.path.join(workdir, "run.json"), info)
  files.write_json(os.path.join(workdir, "test_ranks.json"), np.asarray(ranks["test"]).tolist(),
                   indent=None)  # per-row ranks: paired comparisons with BIGRec (same rows)
  files.write_json(os.path.join(workdir, "metrics.json"), metrics)
  test = metrics["methods"][model]["test"]
  log(f"[baseline] {model} test NDCG@10 {test['NDCG@10']:.4f} HR@10 {test['HR@10']:.4f} "
      f"({info['seconds']:.1f}s) -> {workdir}")
  return metrics
