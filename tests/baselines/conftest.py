"""Fixtures for the baseline tests: a synthetic prepared dir, the real ML-100K split, the config."""
from __future__ import annotations

import importlib.util
import os

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
