"""Exported score matrices: one row per row of valid_5000.json / test_5000.json, in order."""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from bigrec_jax.baselines import data as data_lib, models, run, trainer
from bigrec_jax.evaluate import report
from conftest import load_config


def test_exported_rows_line_up_with_prediction_rows(rule_dir, tmp_path):
  config = load_config()
  config.train.update(batch_size=128, eval_batch_size=64, learning_rate=3e-3, max_epochs=4,
                      patience=2)  # 301 / 257 rows: the last eval batch is padded
  workdir = str(tmp_path)
  metrics = run.train_and_evaluate(config, model="gru4rec", data_dir=rule_dir, workdir=workdir)

  model = models.build_model("gru4rec", 30, config.max_len, dict(config.gru4rec))
  params = trainer.restore_best(os.path.join(workdir, "checkpoints"),
                                trainer.init_params(model, config.max_len))
  for split, stem in data_lib.SPLITS.items():
    with open(os.path.join(rule_dir, f"{stem}.json")) as f:
      rows = json.load(f)
    scores = np.load(run.scores_path(workdir, split))
    assert scores.shape == (len(rows), 30) and scores.dtype == np.float32
    # Row i of the file, scored on its own from the JSON, is row i of the matrix.
    for i in (0, 1, 63, 64, len(rows) - 1):
      history = data_lib.encode_rows([rows[i]], 30, config.max_len).histories
      alone = np.asarray(jax.jit(model.apply)({"params": params}, history))[0]
      np.testing.assert_allclose(scores[i], alone, rtol=1e-4, atol=1e-4)
    targets = np.array([r["target_item_id"] for r in rows])
    assert (scores.argmax(axis=1) == targets).mean() >= 0.95
    ranks = run.all_rank(scores, targets)
    assert metrics["methods"]["gru4rec"][split]["HR@1"] == (ranks == 0).mean()

  with open(os.path.join(workdir, "metrics.json")) as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(metrics))
  assert written["counts"]["test"]["rows"] == 257 and written["num_items"] == 30
  print(report.format_table(written))  # the grounding stage's table reads it as is
  with open(os.path.join(workdir, "run.json")) as f:
    info = json.load(f)
  assert 1 <= info["best_epoch"] <= info["epochs"] <= 4 and len(info["curve"]) == info["epochs"]
