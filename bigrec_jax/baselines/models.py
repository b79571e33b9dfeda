"""The model registry: a name and a config section -> a Flax module mapping history -> logits."""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn

from bigrec_jax.baselines.caser import Caser
from bigrec_jax.baselines.gru4rec import GRU4Rec
from bigrec_jax.baselines.sasrec import SASRec
from bigrec_jax.files import UserError

TRAINED = {"sasrec": SASRec, "gru4rec": GRU4Rec, "caser": Caser}
# dros trains a TRAINED backbone with the DROS objective (dros.py); mostpop counts.
MODELS = tuple(TRAINED) + ("mostpop", "dros")


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


def backbone_name(name: str, config: Mapping[str, Any]) -> str:
  """The network a trained baseline runs: itself, or DROS's `config.dros.backbone`."""
  if name == "dros":
    from bigrec_jax.baselines import dros  # dros reads TRAINED from here

    return dros.DROSSettings.from_mapping(config.get("dros")).backbone
  return name


def build_from_config(name: str, config: Mapping[str, Any], num_items: int,
                      max_len: int) -> nn.Module:
  """The module a baseline's checkpoint holds, from the baselines config (configs/baselines.py).

  DROS changes only the training objective: its checkpoint is its backbone's parameters, with
  the backbone's own config section (e.g. config.sasrec) as hyperparameters.
  """
  backbone = backbone_name(name, config)
  return build_model(backbone, num_items, max_len, dict(config.get(backbone, {})))
