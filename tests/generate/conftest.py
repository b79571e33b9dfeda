"""Fixtures for the generation tests: real ML-100K prompts and a tiny random model."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ml100k():
  """The embedded ML-100K built in memory (rows and catalog), as prepare_data would write it."""
  from bigrec_jax.data import prepare

  return prepare.build("ml-100k")


@pytest.fixture(scope="session")
def real_rows(ml100k):
  """Eight real BIGRec test rows (movie domain, 10-item histories), spread over the split."""
  rows = ml100k.rows["test"]
  step = len(rows) // 8
  return [rows[i * step] for i in range(8)]
