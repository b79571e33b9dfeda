"""launch/evaluate.py and evaluate_predictions: bad input fails cleanly, a real run writes all."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bigrec_jax.evaluate import run

import evaluate_fixtures as fx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _launch(*args):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "evaluate.py"), *args],
                        capture_output=True, text=True, timeout=300, cwd=ROOT)
  proc.stderr = " ".join(proc.stderr.split())  # undo the message's line wrapping
  return proc


def _files(tmp_path, valid_rows, test_rows):
  fx.write_prepared(str(tmp_path / "data"))
  return dict(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "out"),
              valid_predictions=fx.write_rows(str(tmp_path / "valid.json"), valid_rows),
              test_predictions=fx.write_rows(str(tmp_path / "test.json"), test_rows))


def _flags(paths):
  return [f"--{k}={v}" for k, v in paths.items()] + ["--ks=1,5,10"]


def test_launcher_rejects_bad_input_without_writing_metrics(tmp_path):
  rows = fx.prediction_rows(6, seed=1)
  bad = [dict(r) for r in rows]
  del bad[4]["predict"]
  paths = _files(tmp_path, rows, bad)
  proc = _launch(*_flags(paths))
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "test.json:6: row 4: no `predict` field" in proc.stderr
  assert "Traceback" not in proc.stderr
  np.save(tmp_path / "cf.npy", np.zeros((5, 32), np.float32))
  paths["test_predictions"] = fx.write_rows(str(tmp_path / "test.json"), rows)
  proc = _launch(*_flags(paths), "--cf_names=sasrec", f"--cf_valid_scores={tmp_path}/cf.npy",
                 f"--cf_test_scores={tmp_path}/cf.npy")
  assert proc.returncode == 2 and "cf.npy: CF scores have shape (5, 32)" in proc.stderr
  proc = _launch(*_flags(paths), "--ks=1,x")
  assert proc.returncode == 2 and "--ks: expected int values" in proc.stderr
  proc = _launch(*_flags(paths), "--ks=1,50")
  assert proc.returncode == 2 and "K cannot exceed the 32 catalog items" in proc.stderr
  assert not os.path.exists(tmp_path / "out" / "metrics.json")


def test_real_model_run_writes_metrics_plots_and_examples(smollm2, tmp_path):
  valid, test = fx.prediction_rows(16, seed=2, empty_every=9), fx.prediction_rows(16, seed=3)
  for r in test[1::2]:  # half of the test rows predict exactly their target's title
    r["predict"] = [f'"{fx.TITLES[r["target_item_id"]]}"\n']
  paths = _files(tmp_path, valid, test)
  rng = np.random.default_rng(0)
  for split, n in (("valid", 16), ("test", 16)):
    np.save(tmp_path / f"cf_{split}.npy", rng.normal(size=(n, 32)).astype(np.float32))
  opts = run.EvaluateOptions(
      **paths, cf_names=["sasrec"], cf_valid_scores=[str(tmp_path / "cf_valid.npy")],
      cf_test_scores=[str(tmp_path / "cf_test.npy")], ks=(1, 5, 10), pop_gammas=(0.0, 1.0, 10.0),
      cf_gammas=(0.0, 0.5, 5.0), embedding_cache=str(tmp_path / "cache"), embed_batch_size=16,
      progress=False)
  metrics = run.evaluate_predictions(opts, model=smollm2, log=lambda m: None)
  with open(tmp_path / "out" / "metrics.json") as f:
    assert json.load(f) == json.loads(json.dumps(metrics))
  assert set(metrics["methods"]) == {"bigrec", "bigrec+pop", "bigrec+cf:sasrec",
                                     "bigrec+pop+cf:sasrec"}
  assert metrics["counts"]["valid"]["empty_predictions"] == 2
  assert metrics["methods"]["bigrec"]["test"]["HR@1"] >= 0.5  # exact titles ground to themselves
  with open(tmp_path / "out" / "test_top_items.json") as f:
    top = json.load(f)
  for row in top[1::2]:
    assert fx.TITLES[row["bigrec"][0]] == row["target"]
    assert row["bigrec+pop"][0] == row["bigrec"][0]  # injection never moves the top-1
  assert {"gamma_curves.png", "popularity.png"} <= set(os.listdir(tmp_path / "out"))
  assert len(os.listdir(tmp_path / "cache")) == 1


def test_real_model_run_with_two_beams(smollm2, tmp_path):
  """--beams=2 end to end: both returned sequences are embedded and grounded together."""
  valid, test = fx.prediction_rows(8, seed=2, empty_every=3), fx.prediction_rows(8, seed=3)
  for r in test[1::2]:  # both beams name the target exactly: it is the nearest by either
    r["predict"] = [f'"{fx.TITLES[r["target_item_id"]]}"'] * 2
  test[2]["predict"] = test[2]["predict"][:1]  # a row with one prediction
  paths = _files(tmp_path, valid, test)
  opts = run.EvaluateOptions(**paths, ks=(1, 5), beams=2, pop_gammas=(0.0, 1.0),
                             embedding_cache=str(tmp_path / "cache"), progress=False)
  metrics = run.evaluate_predictions(opts, model=smollm2, log=lambda m: None)
  assert metrics["inputs"]["beams"] == 2 and "1/(r+1)" in metrics["inputs"]["beam_weighting"]
  assert metrics["counts"]["valid"]["empty_predictions"] == 0  # '' best beams, "other beam" 2nd
  one = run.evaluate_predictions(
      run.EvaluateOptions(**dict(paths, out_dir=str(tmp_path / "one")), ks=(1, 5),
                          pop_gammas=(0.0, 1.0), embedding_cache=str(tmp_path / "cache"),
                          progress=False), model=smollm2, log=lambda m: None)
  assert one["counts"]["valid"]["empty_predictions"] == 3
  assert metrics["methods"]["bigrec"]["test"]["HR@1"] >= 0.5
  with open(tmp_path / "out" / "test_top_items.json") as f:
    top = json.load(f)
  for row in top[1::2]:
    assert fx.TITLES[row["bigrec"][0]] == row["target"]
  with pytest.raises(run.UserError, match="--beams=2 .* --beam=1"):
    run.evaluate_predictions(run.EvaluateOptions(**paths, beams=2, beam=1), model=smollm2)
