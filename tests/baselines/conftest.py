"""Fixtures for the baseline tests: a synthetic prepared dir, the real ML-100K split, the config."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from baseline_fixtures import write_prepared

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FEW_SHOT = (64, 1)  # (N, seed) of the few-shot sample written by prepare_data


def load_config():
  """configs/baselines.py's get_config() (configs/ is not a package)."""
  spec = importlib.util.spec_from_file_location("baselines_config",
                                                os.path.join(REPO, "configs", "baselines.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def train_with_llvm_optimisation(model: str, data_dir: str, workdir: str, **train) -> dict:
  """`launch/train_baseline.py` in a process of its own, XLA's LLVM optimisation on: the test
  suite compiles without it (tests/conftest.py), which costs a training of thousands of steps
  on the real split ~4x its time. Returns the model's test metrics from metrics.json."""
  flags = os.environ.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "")
  env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
  args = [f"--config.train.{k}={v}" for k, v in train.items()]
  r = subprocess.run([sys.executable, os.path.join(REPO, "launch", "train_baseline.py"),
                      f"--model={model}", f"--data_dir={data_dir}", f"--workdir={workdir}", *args],
                     capture_output=True, text=True, cwd=REPO, env=env, timeout=1200)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.json")) as f:
    return json.load(f)["methods"][model]["test"]


@pytest.fixture(scope="session")
def rule_dir(tmp_path_factory) -> str:
  """Next item = last item + 1; histories of 3-10 items (left padding in play)."""
  return write_prepared(str(tmp_path_factory.mktemp("rule")), num_items=30, train=2000,
                        valid=301, test=257, min_len=3)


@pytest.fixture(scope="session")
def ml100k_dir(tmp_path_factory) -> str:
  """The real embedded ML-100K, prepared by the data stage, with a few-shot file (64, seed 1)."""
  from bigrec_jax.data import prepare

  out = str(tmp_path_factory.mktemp("ml100k"))
  options = prepare.PrepareOptions(few_shot_sample=FEW_SHOT[0], few_shot_seed=FEW_SHOT[1])
  prepare.prepare("ml-100k", out, None, None, options)
  return out
