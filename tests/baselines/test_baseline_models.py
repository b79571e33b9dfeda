"""Each baseline learns the synthetic rule (next = last + 1) to near-perfect HR@1."""
from __future__ import annotations

import numpy as np
import pytest

from bigrec_jax.baselines import data as data_lib, models, run
from bigrec_jax.files import UserError
from conftest import load_config


def quick_config():
  config = load_config()
  config.train.update(batch_size=128, learning_rate=3e-3, max_epochs=8, patience=2)
  return config


@pytest.mark.parametrize("model", ["sasrec", "gru4rec", "caser"])
def test_learns_next_item_rule(model, rule_dir, tmp_path):
  metrics = run.train_and_evaluate(quick_config(), model=model, data_dir=rule_dir,
                                   workdir=str(tmp_path))
  test = metrics["methods"][model]["test"]
  print(model, test["HR@1"], test["NDCG@10"])
  assert test["HR@1"] >= 0.95


def test_mostpop_ranks_by_training_popularity(rule_dir, tmp_path):
  metrics = run.train_and_evaluate(load_config(), model="mostpop", data_dir=rule_dir,
                                   workdir=str(tmp_path))
  data = data_lib.load(rule_dir, max_len=10)
  scores = np.load(run.scores_path(str(tmp_path), "test"))
  assert scores.shape == (len(data.test), data.num_items)
  np.testing.assert_array_equal(scores, np.tile(data.popularity, (len(data.test), 1)))
  expected = [(data.popularity > data.popularity[t]).sum() for t in data.test.targets]
  hr10 = np.mean(np.asarray(expected) < 10)
  assert metrics["methods"]["mostpop"]["test"]["HR@10"] == pytest.approx(hr10)


def test_all_rank_counts_strictly_higher_scores():
  scores = np.array([[0.1, 0.5, 0.5, 0.2], [3.0, 1.0, 2.0, 0.0]])
  np.testing.assert_array_equal(run.all_rank(scores, np.array([1, 3])), [0, 3])


def test_unknown_model_field_is_a_user_error():
  with pytest.raises(UserError, match="hiddn"):
    models.build_model("sasrec", 10, 10, {"hiddn": 3})


def test_caser_fused_horizontal_convs_match_separate_convolutions():
  import jax

  from bigrec_jax.baselines.caser import horizontal_features

  rng = np.random.default_rng(0)
  b, length, d, f = 3, 5, 4, 2
  e = rng.normal(size=(b, length, d)).astype(np.float32)
  kernel = rng.normal(size=(length, d, length, f)).astype(np.float32)
  bias = rng.normal(size=(length, f)).astype(np.float32)
  got = np.asarray(jax.jit(horizontal_features)(e, kernel, bias))
  want = np.zeros((b, length, f), np.float32)
  for h in range(1, length + 1):  # a 'VALID' convolution of height h, relu, max over starts
    conv = [np.einsum("bjd,jdf->bf", e[:, t:t + h], kernel[:h, :, h - 1]) + bias[h - 1]
            for t in range(length - h + 1)]
    want[:, h - 1] = np.maximum(np.stack(conv, 1), 0).max(axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gru4rec_padding_steps_leave_the_state_alone():
  import jax

  # Jitted: eagerly the recurrence's scan compiles again on every call.
  model = models.build_model("gru4rec", 20, 6, {"dropout": 0.0})
  params = jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, 6), np.int32))["params"]
  padded = np.array([[20, 20, 20, 3, 7, 9]], np.int32)
  short = models.build_model("gru4rec", 20, 3, {"dropout": 0.0})
  np.testing.assert_allclose(jax.jit(model.apply)({"params": params}, padded),
                             jax.jit(short.apply)({"params": params}, padded[:, 3:]),
                             rtol=1e-5, atol=1e-5)
