"""A few-shot baseline run trains on exactly the LLM run's few-shot rows."""
from __future__ import annotations

import json
import os

import numpy as np

from bigrec_jax.baselines import data as data_lib, run
from bigrec_jax.data import prepare
from conftest import FEW_SHOT, load_config


def test_few_shot_rows_are_the_llm_sample(ml100k_dir):
  n, seed = FEW_SHOT
  # The file prepare_data writes for the LLM run (--sample=64 --seed=1).
  with open(os.path.join(ml100k_dir, prepare.few_shot_file(n, seed))) as f:
    llm_rows = json.load(f)
  data = data_lib.load(ml100k_dir, max_len=10, sample=n, seed=seed)
  expected = data_lib.encode_rows(llm_rows, data.num_items, 10)
  assert len(data.train) == n
  np.testing.assert_array_equal(data.train.histories, expected.histories)
  np.testing.assert_array_equal(data.train.targets, expected.targets)
  other = data_lib.load(ml100k_dir, max_len=10, sample=n, seed=seed + 1)
  assert not np.array_equal(other.train.targets, data.train.targets)


def test_few_shot_run_records_its_sample(ml100k_dir, tmp_path):
  n, seed = FEW_SHOT
  config = load_config()
  config.train.update(max_epochs=1)
  metrics = run.train_and_evaluate(config, model="gru4rec", data_dir=ml100k_dir,
                                   workdir=str(tmp_path), sample=n, seed=seed)
  with open(tmp_path / "run.json") as f:
    info = json.load(f)
  assert (info["train_rows"], info["sample"], info["seed"]) == (n, n, seed)
  assert metrics["counts"]["test"]["rows"] == len(data_lib.load(ml100k_dir, max_len=10).test)
