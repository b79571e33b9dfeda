"""Hyperparameters of the sequential baselines (launch/train_baseline.py).

The model, data dir, workdir, few-shot sample size and seed are flags; everything here can be
overridden with --config.<field>=value, e.g. --config.train.max_epochs=5 --config.sasrec.heads=2
or --config.dros.alpha=0.5.
"""
from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.max_len = 10  # BIGRec's history length
  config.train = ml_collections.ConfigDict(dict(
      batch_size=512,
      eval_batch_size=1024,
      learning_rate=1e-3,
      weight_decay=0.01,
      grad_clip=1.0,
      max_epochs=50,
      patience=5,
  ))
  config.sasrec = ml_collections.ConfigDict(dict(hidden=64, blocks=2, heads=1, dropout=0.2))
  config.gru4rec = ml_collections.ConfigDict(dict(embed_dim=64, hidden=128, dropout=0.2))
  config.caser = ml_collections.ConfigDict(dict(embed_dim=64, horizontal=16, vertical=4,
                                                dropout=0.3))
  # DROS (bigrec_jax/baselines/dros.py): the backbone (its section above holds its network)
  # trained with its loss + alpha * the DRO term. Reference defaults (YangZhengyi98/DROS):
  # BCE with one sampled negative, beta (robust radius) 1.0, propensity exponent 0.05. The
  # reference's alpha default is 0 (DRO off); alpha=1.0 is our choice (README, DROS).
  config.dros = ml_collections.ConfigDict(dict(backbone="sasrec", loss="bce", alpha=1.0,
                                               beta=1.0, ps_power=0.05))
  # The pipeline's baselines stage (launch/train_baseline.py takes --model instead).
  config.models = ("sasrec", "gru4rec", "caser", "mostpop")
  config.few_shot = True  # also train on the LLM's few-shot sample
  config.lock()  # a misspelt field is an error naming it, as for configs/default.py
  return config
