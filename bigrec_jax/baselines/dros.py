"""DROS (Yang et al., SIGIR 2023): a sequential backbone trained with its own loss plus a
distributionally robust term over the whole catalog.

The objective of one batch, with model scores s [B, N] over all N items and targets t:

    loss = backbone_loss(s, t) + alpha * mean_rows(loss_dro)
    loss_dro = log( sum_j exp(ps_j * s_j^2 / beta) - exp(ps_t * s_t^2 / beta)
                    + exp(ps_t * (s_t - 1)^2 / beta) )
    ps = ((count + 1) / sum(count + 1)) ** ps_power

`count` is how often each item is the target of a training row (the rows this run trains on:
the few-shot sample when there is one), `beta` the robust radius and `alpha` the DRO weight.
The backbone loss is the reference's BCE on the target and one uniformly sampled other item
(`bpr` and `mse` are its variants; `softmax` is the full-catalog cross-entropy the project's
other baselines train with). The backbone is any trainable baseline (SASRec by default); its
hyperparameters are its own config section, so DROS-SASRec is the project's SASRec network.

Where this follows the reference training script (YangZhengyi98/DROS, `SASRec_bce.py`) and
where it departs:
- ps uses the reference's exponent 0.05 (`np.power(ps, 0.05)`), not a square root;
- loss_dro is computed as one logsumexp over the row with the target's entry replaced by
  ps_t (s_t - 1)^2 / beta: the same value (the reference's `+ 1e-24` inside the log is below
  float32 resolution, the sum being >= 1), but finite for any score, where the reference's
  exp() overflows float32 once ps * s^2 / beta passes ~88;
- alpha = 0 leaves the DRO term out of the graph, as the reference's `if args.alpha == 0.0`;
- `bpr` is -log_sigmoid(s_t - s_neg) (the reference: -log(1e-24 + sigmoid(.)), which
  differs only once sigmoid underflows);
- the optimizer, batching and early stopping are the project's baseline trainer (AdamW,
  epochs of shuffled batches, best validation NDCG@10), not the reference's Adam with L2 and
  batches drawn with replacement.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bigrec_jax.baselines import trainer
from bigrec_jax.files import UserError

LOSSES = ("bce", "bpr", "mse", "softmax")
Objective = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class DROSSettings:
  backbone: str = "sasrec"
  loss: str = "bce"
  alpha: float = 1.0
  beta: float = 1.0
  ps_power: float = 0.05

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any] | None) -> "DROSSettings":
    from bigrec_jax.baselines import models  # models imports this module

    values = dict(values or {})
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise UserError(f"config.dros: unknown field(s) {unknown}")
    settings = cls(**values)
    if settings.backbone not in models.TRAINED:
      raise UserError(f"config.dros.backbone={settings.backbone!r}: choose one of "
                      f"{', '.join(models.TRAINED)}")
    if settings.loss not in LOSSES:
      raise UserError(f"config.dros.loss={settings.loss!r}: choose one of {', '.join(LOSSES)}")
    if not settings.beta > 0:
      raise UserError(f"config.dros.beta must be > 0, got {settings.beta}")
    if not settings.alpha >= 0:
      raise UserError(f"config.dros.alpha must be >= 0, got {settings.alpha}")
    return settings


def propensity(counts, power: float = 0.05) -> np.ndarray:
  """ps = ((count + 1) / sum(count + 1)) ** power, float32 [N]."""
  smoothed = np.asarray(counts, np.float64) + 1.0
  return ((smoothed / smoothed.sum()) ** power).astype(np.float32)


def target_counts(targets: np.ndarray, num_items: int) -> np.ndarray:
  """How often each item is a training target (the reference's Counter(train['next']))."""
  return np.bincount(np.asarray(targets), minlength=num_items)[:num_items]


def dro_loss(logits: jnp.ndarray, target: jnp.ndarray, ps: jnp.ndarray,
             beta: float) -> jnp.ndarray:
  """loss_dro per row [B] (module docstring), as a logsumexp with the target's term swapped."""
  s = logits.astype(jnp.float32)
  a = ps * jnp.square(s) / beta  # [B, N]
  s_t = jnp.take_along_axis(s, target[:, None], axis=1)  # [B, 1]
  ps_t = ps[target][:, None]
  corrected = ps_t * jnp.square(s_t - 1.0) / beta
  is_target = jnp.arange(s.shape[1])[None, :] == target[:, None]
  return jax.nn.logsumexp(jnp.where(is_target, corrected, a), axis=1)


def sampled_negatives(rng, target: jnp.ndarray, num_items: int) -> jnp.ndarray:
  """One item per row, uniform over the catalog except the row's target."""
  offset = jax.random.randint(rng, target.shape, 1, num_items, dtype=target.dtype)
  return (target + offset) % num_items


def backbone_loss(kind: str, logits: jnp.ndarray, target: jnp.ndarray, weights: jnp.ndarray,
                  rng) -> jnp.ndarray:
  """The backbone's loss, averaged over the real (weight-1) rows."""
  if kind == "softmax":
    return trainer.softmax_cross_entropy(logits, target, weights, rng)
  s = logits.astype(jnp.float32)
  neg = sampled_negatives(jax.random.fold_in(rng, 1), target, s.shape[1])
  pos_s = jnp.take_along_axis(s, target[:, None], axis=1)[:, 0]
  neg_s = jnp.take_along_axis(s, neg[:, None], axis=1)[:, 0]
  if kind == "bce":  # BCEWithLogits over the 2B scores (labels 1, 0)
    per_row = (jax.nn.softplus(-pos_s) + jax.nn.softplus(neg_s)) / 2
  elif kind == "bpr":
    per_row = -jax.nn.log_sigmoid(pos_s - neg_s)
  elif kind == "mse":  # MSE over the 2B scores against labels 1, 0
    per_row = (jnp.square(pos_s - 1.0) + jnp.square(neg_s)) / 2
  else:
    raise UserError(f"config.dros.loss={kind!r}: choose one of {', '.join(LOSSES)}")
  return (per_row * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def make_objective(settings: DROSSettings, counts) -> Objective:
  """objective(logits, target, weights, rng) -> scalar, for trainer.make_train_step."""
  ps = jnp.asarray(propensity(counts, settings.ps_power))
  if settings.loss != "softmax" and ps.shape[0] < 2:
    raise UserError(f"config.dros.loss={settings.loss!r} samples a negative item: the catalog "
                    f"needs at least 2 items, it has {ps.shape[0]}")

  def objective(logits, target, weights, rng):
    loss = backbone_loss(settings.loss, logits, target, weights, rng)
    if settings.alpha == 0.0:  # the reference drops the term: the plain backbone, exactly
      return loss
    dro = dro_loss(logits, target, ps, settings.beta)
    return loss + settings.alpha * (dro * weights).sum() / jnp.maximum(weights.sum(), 1.0)

  return objective
