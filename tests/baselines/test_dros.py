"""DROS: the DRO term against a plain numpy transcription of the reference formula, the sampled
negatives, alpha = 0 as the plain backbone bit for bit, and a short real ML-100K run."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigrec_jax.baselines import dros, models, run, trainer
from bigrec_jax.files import UserError
from conftest import load_config, train_with_llvm_optimisation


def reference_dro(s: np.ndarray, target: np.ndarray, ps: np.ndarray, beta: float) -> np.ndarray:
  """The reference's lines (SASRec_bce.py), in float64 numpy."""
  rows = np.arange(len(target))
  pos_scores_dro = (s * s * ps)[rows, target]
  pos_loss_dro = ((s - 1) * (s - 1) * ps)[rows, target]
  inner = (np.exp(s * s * ps / beta).sum(1) - np.exp(pos_scores_dro / beta)
           + np.exp(pos_loss_dro / beta))
  return np.log(inner + 1e-24)


def test_propensity_is_the_reference_formula():
  counts = np.array([0, 3, 1, 0, 10])
  ps = (counts + 1) / (counts + 1).sum()
  np.testing.assert_allclose(dros.propensity(counts), ps ** 0.05, rtol=1e-6)
  np.testing.assert_allclose(dros.propensity(counts, 0.5), np.sqrt(ps), rtol=1e-6)
  np.testing.assert_array_equal(dros.target_counts(np.array([1, 4, 4, 1, 4]), 6),
                                [0, 2, 0, 0, 3, 0])


# The term runs jitted, as the trainer runs it (one compiled program per
# shape instead of every op dispatched and compiled on its own: most of these tests' time).
_dro_loss = jax.jit(dros.dro_loss)


def test_dro_term_matches_numpy_on_a_hand_case():
  s = np.array([[0.5, -1.0, 2.0, 0.0],
                [1.5, 0.25, -0.5, 3.0],
                [0.0, 0.0, 0.0, 0.0]], np.float32)
  target = np.array([2, 0, 3], np.int32)
  ps = dros.propensity(np.array([2, 0, 5, 1]))
  for beta in (1.0, 0.5, 3.0):
    got = np.asarray(_dro_loss(jnp.asarray(s), jnp.asarray(target), jnp.asarray(ps), beta))
    want = reference_dro(s.astype(np.float64), target, ps.astype(np.float64), beta)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  # Row 3 by hand: every s_j = 0, so the sum is N = 4, minus exp(0) for the target, plus
  # exp(ps_t * (0 - 1)^2): the target's correction term is what moves it off log(4).
  got = float(_dro_loss(jnp.asarray(s[2:]), jnp.asarray(target[2:]), jnp.asarray(ps), 1.0)[0])
  assert got == pytest.approx(np.log(3 + np.exp(ps[3])), rel=1e-6)
  assert got != pytest.approx(np.log(4.0), rel=1e-3)


def test_dro_term_stays_finite_where_the_reference_exp_overflows():
  s = np.array([[20.0, -2.0, 0.5], [1.0, 15.0, -12.0]], np.float32)  # s^2 >= 144 > log(f32 max)
  target = np.array([0, 2], np.int32)
  ps = np.ones(3, np.float32)
  with np.errstate(over="ignore", invalid="ignore"):
    assert not np.isfinite(reference_dro(s, target, ps, 1.0)).any()  # float32 exp(144) = inf
  got = np.asarray(_dro_loss(jnp.asarray(s), jnp.asarray(target), jnp.asarray(ps), 1.0))
  np.testing.assert_allclose(got, reference_dro(s.astype(np.float64), target,
                                                ps.astype(np.float64), 1.0), rtol=1e-6)
  grad = jax.jit(jax.grad(
      lambda x: dros.dro_loss(x, jnp.asarray(target), jnp.asarray(ps), 1.0).sum()))(jnp.asarray(s))
  assert np.isfinite(np.asarray(grad)).all()


def test_objective_is_backbone_loss_plus_alpha_times_mean_dro():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 7)).astype(np.float32)
  target = np.array([0, 6, 3, 3, 1], np.int32)
  weights = np.array([1, 1, 1, 1, 0], np.float32)  # the last row is batch padding
  counts = np.array([4, 0, 1, 9, 0, 2, 3])
  key = jax.random.key(3)
  neg = np.asarray(dros.sampled_negatives(jax.random.fold_in(key, 1), jnp.asarray(target), 7))
  real = slice(0, 4)
  pos_s, neg_s = logits[np.arange(5), target], logits[np.arange(5), neg]
  softplus = lambda x: np.log1p(np.exp(x))
  bce = np.mean(np.concatenate([softplus(-pos_s[real]), softplus(neg_s[real])]))
  dro = reference_dro(logits[real].astype(np.float64), target[real],
                      dros.propensity(counts).astype(np.float64), 2.0).mean()
  for alpha in (0.0, 0.3):
    objective = dros.make_objective(dros.DROSSettings(loss="bce", alpha=alpha, beta=2.0), counts)
    got = float(objective(jnp.asarray(logits), jnp.asarray(target), jnp.asarray(weights), key))
    assert got == pytest.approx(bce + alpha * dro, rel=1e-5)
  bpr = np.mean(-np.log(1 / (1 + np.exp(-(pos_s[real] - neg_s[real])))))
  mse = np.mean(np.concatenate([(pos_s[real] - 1) ** 2, neg_s[real] ** 2]))
  for kind, want in (("bpr", bpr), ("mse", mse)):
    objective = dros.make_objective(dros.DROSSettings(loss=kind, alpha=0.0), counts)
    got = float(objective(jnp.asarray(logits), jnp.asarray(target), jnp.asarray(weights), key))
    assert got == pytest.approx(want, rel=1e-5)


def test_sampled_negatives_are_uniform_over_the_other_items():
  target = jnp.asarray(np.repeat(np.arange(5, dtype=np.int32), 4000))
  neg = np.asarray(jax.jit(dros.sampled_negatives, static_argnums=2)(jax.random.key(0), target, 5))
  assert (neg != np.asarray(target)).all() and neg.min() >= 0 and neg.max() <= 4
  for t in range(5):
    share = np.bincount(neg[np.asarray(target) == t], minlength=5) / 4000
    others = np.delete(share, t)
    np.testing.assert_allclose(others, 0.25, atol=0.03)


def test_bad_dros_settings_are_user_errors():
  for values, match in (({"backbone": "mostpop"}, "backbone"), ({"loss": "hinge"}, "loss"),
                        ({"beta": 0.0}, "beta"), ({"alpha": -1.0}, "alpha"),
                        ({"alhpa": 1.0}, "alhpa")):
    with pytest.raises(UserError, match=match):
      dros.DROSSettings.from_mapping(values)


def _checkpoint(workdir, name, config, num_items=30):
  module = models.build_from_config(name, config, num_items, config.max_len)
  return trainer.restore_best(os.path.join(workdir, "checkpoints"),
                              trainer.init_params(module, config.max_len))


def test_alpha_zero_is_the_plain_backbone_bit_for_bit(rule_dir, tmp_path):
  """DROS with alpha = 0 and the backbone's own loss trains the very same parameters."""
  config = load_config()
  config.train.update(batch_size=128, learning_rate=3e-3, max_epochs=2, patience=2)
  config.dros.update(alpha=0.0, loss="softmax", backbone="gru4rec")
  plain = run.train_and_evaluate(config, model="gru4rec", data_dir=rule_dir,
                                 workdir=str(tmp_path / "plain"))
  zero = run.train_and_evaluate(config, model="dros", data_dir=rule_dir,
                                workdir=str(tmp_path / "dros"))
  assert zero["methods"]["dros"] == plain["methods"]["gru4rec"]
  jax.tree.map(np.testing.assert_array_equal,
               _checkpoint(str(tmp_path / "plain"), "gru4rec", config),
               _checkpoint(str(tmp_path / "dros"), "dros", config))
  curves = [json.loads((tmp_path / d / "run.json").read_text())["curve"] for d in ("plain", "dros")]
  assert [e["loss"] for e in curves[0]] == [e["loss"] for e in curves[1]]
  np.testing.assert_array_equal(np.load(run.scores_path(str(tmp_path / "plain"), "test")),
                                np.load(run.scores_path(str(tmp_path / "dros"), "test")))
  # ... and alpha > 0 does change them (the term is in the graph).
  config.dros.alpha = 0.5
  run.train_and_evaluate(config, model="dros", data_dir=rule_dir, workdir=str(tmp_path / "a05"))
  assert json.loads((tmp_path / "a05" / "run.json").read_text())["curve"][0]["loss"] != \
      curves[0][0]["loss"]


def test_dros_sasrec_beats_mostpop_on_ml100k(ml100k_dir, tmp_path):
  """The default DROS (SASRec, BCE + DRO) on the real split, one epoch."""
  config = load_config()
  config.train.update(max_epochs=1, batch_size=256, learning_rate=3e-3)
  pop = run.train_and_evaluate(config, model="mostpop", data_dir=ml100k_dir,
                               workdir=str(tmp_path / "mostpop"))["methods"]["mostpop"]["test"]
  got = train_with_llvm_optimisation("dros", ml100k_dir, str(tmp_path / "dros"),
                                     max_epochs=1, batch_size=256, learning_rate=3e-3)
  info = json.loads((tmp_path / "dros" / "run.json").read_text())
  assert info["backbone"] == "sasrec" and info["dros"]["loss"] == "bce"
  print(f"ML-100K test_5000  MostPop NDCG@10 {pop['NDCG@10']:.4f} HR@10 {pop['HR@10']:.4f} | "
        f"DROS (1 epoch) NDCG@10 {got['NDCG@10']:.4f} HR@10 {got['HR@10']:.4f}")
  assert got["NDCG@10"] > pop["NDCG@10"]


def test_pipeline_trains_dros_and_injects_it_as_a_cf_source(rule_dir, tmp_path, monkeypatch):
  """baselines.models / ground.cf_sources accept dros; the evaluate stage reads its scores."""
  import shutil

  from bigrec_jax import pipeline
  from bigrec_jax.evaluate import run as evaluate_run
  from configs import tiny

  config = tiny.get_config()
  config.baselines.models = ("dros", "mostpop")
  config.ground.cf_sources = ("dros",)
  pipeline.check_config(config)
  paths = pipeline.Paths(str(tmp_path))
  shutil.copytree(rule_dir, paths.data)
  pipeline.baselines_stage(config, paths, log=print)
  info = json.loads(open(os.path.join(paths.baseline_dir("dros"), "run.json")).read())
  assert info["backbone"] == "sasrec" and info["dros"]["alpha"] == config.baselines.dros.alpha

  seen = {}

  def fake_evaluate(opts, log):  # grounding itself needs predictions and the LLM: not here
    seen["opts"] = opts
    return {"methods": {}}

  monkeypatch.setattr(evaluate_run, "evaluate_predictions", fake_evaluate)
  pipeline.evaluate_stage(config, paths, log=print)
  opts = seen["opts"]
  assert list(opts.cf_names) == ["dros"]
  for split, path in (("valid", opts.cf_valid_scores[0]), ("test", opts.cf_test_scores[0])):
    assert path == run.scores_path(paths.baseline_dir("dros"), split) and os.path.exists(path)
