"""evaluate_grounding + report on a tiny catalog: every number, gamma, count, table and plot."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bigrec_jax.evaluate import grounding, inputs, report
from bigrec_jax.evaluate.metrics import ranking_metrics

import evaluate_fixtures as fx
import ground_reference as ref

KS = (1, 3, 5, 10)


def _split(tmp_path, name, catalog, table, seed, with_cf=True):
  rows = fx.prediction_rows(24, seed=seed, empty_every=7)
  preds = inputs.read_predictions(fx.write_rows(str(tmp_path / f"{name}.json"), rows), catalog)
  rng = np.random.default_rng(seed)
  ids = {t: catalog.ids_by_title[t][0] for t in catalog.ids_by_title}
  queries = np.stack([table[ids[t]] + 0.8 * rng.normal(size=table.shape[1]) if t else
                      np.zeros(table.shape[1]) for t in preds.texts]).astype(np.float32)
  cf = {"sasrec": rng.normal(size=(24, catalog.num_items))} if with_cf else {}
  return grounding.SplitInputs(name, queries, preds, cf)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("eval")
  data = fx.write_prepared(str(tmp_path / "data"))
  catalog = inputs.read_catalog(str(tmp_path / "data"))
  table = np.random.default_rng(3).normal(size=(32, 8)).astype(np.float32)
  valid = _split(tmp_path, "valid", catalog, table, seed=4)
  test = _split(tmp_path, "test", catalog, table, seed=5)
  result = grounding.evaluate_grounding(table, data["counts"], valid, test, ks=KS,
                                        pop_grid=(0.0, 1.0, 4.0, 20.0),
                                        cf_grid=(0.0, 0.1, 1.0, 9.0), query_batch=16)
  return tmp_path, table, valid, test, data["counts"], result


def test_plain_metrics_follow_cdist_and_empty_rows_never_hit(evaluated):
  _, table, _, test, _, result = evaluated
  best = ref.best_target_ranks(ref.keys(test.queries, table), test.predictions.targets)
  best = np.where(test.predictions.empty, 32, best)
  assert result.metrics["methods"]["bigrec"]["test"] == pytest.approx(ranking_metrics(best, KS))
  assert (result.test_top_ids["bigrec"][test.predictions.empty] == -1).all()


def test_metrics_hold_every_method_gamma_and_count(evaluated):
  _, _, valid, _, _, result = evaluated
  m = result.metrics
  assert set(m["methods"]) == {"bigrec", "bigrec+pop", "bigrec+cf:sasrec", "bigrec+pop+cf:sasrec"}
  twins = int(np.isin(valid.predictions.target_ids, (30, 31)).sum())
  assert twins >= 6
  assert m["counts"]["valid"] == {"rows": 24, "empty_predictions": 4,
                                  "rows_with_duplicate_title_targets": twins}
  for name, method in m["methods"].items():
    assert set(method["test"]) == {f"{x}@{k}" for x in ("NDCG", "HR") for k in KS}
    if name != "bigrec":
      assert set(method["gammas"]) == set(method["test"])
      for metric, g in method["gammas"].items():  # chosen on valid by the metric itself
        curve = method["search"]["valid_curves"][metric]
        assert method["valid"][metric] == max(curve)
  pop = m["methods"]["bigrec+pop"]
  assert all(g["cf"] == 0 for g in pop["gammas"].values())
  assert pop["valid"]["NDCG@10"] >= m["methods"]["bigrec"]["valid"]["NDCG@10"]  # gamma 0 in grid
  json.dumps(m)  # JSON-ready


def test_report_writes_metrics_table_and_plots(evaluated):
  tmp_path, _, _, test, counts, result = evaluated
  paths = report.write_report(str(tmp_path / "out"), result, counts, test.predictions.target_ids)
  with open(paths["metrics"]) as f:
    assert json.load(f) == json.loads(json.dumps(result.metrics))
  for key in ("gamma_curves", "popularity"):
    with open(paths[key], "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  table = report.format_table(result.metrics)
  print(table)
  assert "bigrec+pop+cf:sasrec" in table and "24 rows, 4 empty predictions" in table
  assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".tmp")]


def test_several_beams_ground_by_the_rank_weighted_distance(tmp_path):
  """beams=2: metrics follow sum_r w_r minmax(D_r); rows with one usable beam use it alone."""
  from bigrec_jax.ground import signals

  data = fx.write_prepared(str(tmp_path / "data"))
  catalog = inputs.read_catalog(str(tmp_path / "data"))
  table = np.random.default_rng(3).normal(size=(32, 8)).astype(np.float32)
  splits = []
  for name, seed in (("valid", 4), ("test", 5)):
    rows = fx.prediction_rows(24, seed=seed, empty_every=7)  # predict[0] '' but a second beam
    for r in rows[3::5]:
      r["predict"] = r["predict"][:1]  # rows with one prediction only
    preds = inputs.read_predictions(fx.write_rows(str(tmp_path / f"{name}.json"), rows), catalog,
                                    beams=2)
    present = preds.beam_present()
    rng = np.random.default_rng(seed)
    queries = (table[rng.integers(0, 32, size=(24, 2))] +
               0.8 * rng.normal(size=(24, 2, 8))).astype(np.float32)
    queries[~present] = 0.0
    splits.append(grounding.SplitInputs(name, queries, preds,
                                        beam_weights=signals.beam_rank_weights(present)))
  valid, test = splits
  assert not test.predictions.empty.any() and (~test.predictions.beam_present()).any(1).sum() >= 5
  result = grounding.evaluate_grounding(table, data["counts"], valid, test, ks=KS,
                                        pop_grid=(0.0, 1.0, 4.0), cf_grid=(0.0, 1.0))
  score = ref.beam_keys(test.queries, table, test.beam_weights)
  best = ref.best_target_ranks(score, test.predictions.targets)
  assert result.metrics["methods"]["bigrec"]["test"] == pytest.approx(ranking_metrics(best, KS))
  np.testing.assert_array_equal(result.test_top_ids["bigrec"],
                                ref.top_k(score, 10))
  pop = result.metrics["methods"]["bigrec+pop"]
  p = signals.popularity_weights(data["counts"]).astype(np.float64)
  for metric, g in pop["gammas"].items():
    s = ref.beam_keys(test.queries, table, test.beam_weights, p, gamma_pop=g["pop"])
    expect = ranking_metrics(ref.best_target_ranks(s, test.predictions.targets), KS)[metric]
    assert pop["test"][metric] == pytest.approx(expect), metric


def test_valid_metrics_are_the_valid_numbers_the_evaluation_reports(evaluated):
  """What alpha is chosen by (valid rows only) is what metrics.json reports as their valid values;
  the plain one restated from cdist."""
  _, table, valid, _, counts, result = evaluated
  got = grounding.valid_metrics(table, counts, valid, ks=KS, pop_grid=(0.0, 1.0, 4.0, 20.0),
                                cf_grid=(0.0, 0.1, 1.0, 9.0), query_batch=16)
  assert set(got) == set(result.metrics["methods"])
  for name, method in result.metrics["methods"].items():
    assert got[name] == pytest.approx(method["valid"], abs=1e-12), name
  best = ref.best_target_ranks(ref.keys(valid.queries, table), valid.predictions.targets)
  best = np.where(valid.predictions.empty, 32, best)
  assert got["bigrec"] == pytest.approx(ranking_metrics(best, KS))
