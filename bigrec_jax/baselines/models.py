"""The model registry: a name and a config section -> a Flax module mapping history -> logits."""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn

from bigrec_jax.baselines.caser import Caser
from bigrec_jax.baselines.gru4rec import GRU4Rec
from bigrec_jax.baselines.sasrec import SASRec
from bigrec_jax.files import UserError

TRAINED = {"sasrec": SASRec, "gru4rec": GRU4Rec, "caser": Caser}
MODELS = tuple(TRAINED) + ("mostpop",)


def build_model(name: str, num_items: int, max_len: int,
                hparams: Mapping[str, Any] | None = None) -> nn.Module:
  """A trainable baseline; `hparams` are the module's fields (hidden, dropout, ...)."""
  if name not in TRAINED:
    raise UserError(f"unknown trainable baseline {name!r}; choose one of {', '.join(TRAINED)}")
  cls = TRAINED[name]
  hparams = dict(hparams or {})
  known = set(cls.__dataclass_fields__) - {"parent", "name", "num_items", "max_len"}
  unknown = sorted(set(hparams) - known)
  if unknown:
    raise UserError(f"config for {name}: unknown field(s) {unknown}; known: {sorted(known)}")
  return cls(num_items=num_items, max_len=max_len, **hparams)
