"""Training and all-rank scoring for the Flax baselines.

Full-softmax cross-entropy over the whole catalog (or another objective: DROS's), AdamW, one
jitted step per fixed-shape batch (the last batch is padded with zero-weight rows, so jit
compiles one shape), early stopping on validation NDCG@10, and an orbax checkpoint of the best
parameters, which are what the scores are exported from. Batches are laid out with the
project's mesh helpers, so the same code runs data parallel when more devices are present.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from bigrec_jax import files, parallel
from bigrec_jax.baselines.data import BaselineData, Sequences
from bigrec_jax.evaluate.metrics import ranking_metrics
from bigrec_jax.files import UserError

SELECT_METRIC = "NDCG@10"


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  batch_size: int = 512
  eval_batch_size: int = 1024
  learning_rate: float = 1e-3
  weight_decay: float = 0.01
  grad_clip: float = 1.0
  max_epochs: int = 50
  patience: int = 5
  seed: int = 0

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any], **overrides) -> "TrainSettings":
    values = {**dict(values), **overrides}
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise UserError(f"config.train: unknown field(s) {unknown}")
    settings = cls(**values)
    for name in ("batch_size", "eval_batch_size", "max_epochs"):
      if getattr(settings, name) < 1:
        raise UserError(f"config.train.{name} must be >= 1, got {getattr(settings, name)}")
    if settings.patience < 1:
      raise UserError(f"config.train.patience must be >= 1, got {settings.patience}")
    return settings


@dataclasses.dataclass
class TrainResult:
  params: Any
  best_epoch: int
  epochs_run: int
  seconds: float
  history: list[dict]  # one entry per epoch: loss, validation metrics, seconds


def local_mesh():
  """A data-parallel mesh over this process's devices.

  The baselines are small: every process of a multi-host job trains its own identical copy
  rather than joining collectives, so any one of them can run (or skip) this stage alone.
  """
  return parallel.make_mesh((-1, 1, 1), devices=jax.local_devices())


def _rounded(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _padded_batches(n: int, batch: int, order: np.ndarray | None = None):
  """Yields (row indices padded to `batch` by repeating row 0, weights 1 for real rows)."""
  order = np.arange(n) if order is None else order
  for start in range(0, n, batch):
    idx = order[start:start + batch]
    weights = np.ones(batch, np.float32)
    if len(idx) < batch:
      weights[len(idx):] = 0.0
      idx = np.concatenate([idx, np.full(batch - len(idx), idx[0])])
    yield idx, weights


class Scorer:
  """Jitted all-rank scoring: scores over the catalog and the 0-based rank of each target."""

  def __init__(self, model: nn.Module, mesh, batch_size: int):
    self.mesh = mesh
    self.batch_size = _rounded(batch_size, parallel.data_parallel_size(mesh))

    @jax.jit
    def score(params, history, target):
      scores = model.apply({"params": params}, history, train=False).astype(jnp.float32)
      target_score = jnp.take_along_axis(scores, target[:, None], axis=1)
      ranks = (scores > target_score).sum(axis=1)  # strictly higher; nothing excluded
      return scores, ranks

    self._score = score

  def __call__(self, params, seqs: Sequences, *, keep_scores: bool) -> tuple[np.ndarray | None, np.ndarray]:
    scores, ranks = [], []
    for idx, weights in _padded_batches(len(seqs), self.batch_size):
      real = int(weights.sum())
      batch = parallel.global_batch_from_local(
          {"history": seqs.histories[idx], "target": seqs.targets[idx]}, self.mesh)
      s, r = self._score(params, batch["history"], batch["target"])
      ranks.append(np.asarray(r)[:real])
      if keep_scores:
        scores.append(np.asarray(s)[:real])
    return (np.concatenate(scores) if keep_scores else None), np.concatenate(ranks)


def softmax_cross_entropy(logits, target, weights, rng=None):
  """The baselines' loss: full-catalog cross-entropy, averaged over the real (weight-1) rows."""
  del rng  # deterministic given the logits
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), target)
  return (ce * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation,
                    replicated=None, objective: Callable | None = None) -> Callable:
  """objective(logits, target, weights, rng) -> scalar loss; default softmax_cross_entropy.

  rng is the step's dropout key (DROS folds it to draw its sampled negatives).
  """
  objective = objective or softmax_cross_entropy

  def loss_fn(params, history, target, weights, rng):
    logits = model.apply({"params": params}, history, train=True, rngs={"dropout": rng})
    return objective(logits, target, weights, rng)

  # Outputs keep the inputs' (replicated) sharding, so the next call reuses this compilation.
  @functools.partial(jax.jit, donate_argnums=(0, 1), out_shardings=replicated)
  def step(params, opt_state, history, target, weights, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, history, target, weights, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def make_optimizer(settings: TrainSettings) -> optax.GradientTransformation:
  parts = [optax.clip_by_global_norm(settings.grad_clip)] if settings.grad_clip > 0 else []
  parts.append(optax.adamw(settings.learning_rate, weight_decay=settings.weight_decay))
  return optax.chain(*parts)


def init_params(model: nn.Module, max_len: int, seed: int = 0, mesh=None):
  """Fresh parameters, replicated over the mesh (jitted: eager init dispatches op by op)."""
  mesh = mesh if mesh is not None else local_mesh()
  init = jax.jit(lambda rng, history: model.init(rng, history, train=False)["params"],
                 out_shardings=parallel.replicated(mesh))
  # XLA's RngBitGenerator: threefry initialisers take many times longer to compile on CPU.
  return init(jax.random.key(seed, impl="unsafe_rbg"), jnp.zeros((1, max_len), jnp.int32))


def restore_best(checkpoint_dir: str, like: Any) -> Any:
  """The best parameters saved by `train` (its only checkpoint), shaped and placed like `like`."""
  with ocp.CheckpointManager(files.abspath(checkpoint_dir)) as manager:
    step = manager.latest_step()
    if step is None:
      raise UserError(f"{checkpoint_dir}: no checkpoint found (was the baseline trained here?)")
    return manager.restore(step, args=ocp.args.StandardRestore(like))


def train(model: nn.Module, data: BaselineData, settings: TrainSettings, checkpoint_dir: str,
          *, mesh=None, scorer: Scorer | None = None, objective: Callable | None = None,
          log: Callable[[str], None] = print) -> TrainResult:
  """Trains until validation NDCG@10 stops improving; returns the best (checkpointed) params.

  objective: the training loss (make_train_step); None = softmax_cross_entropy.
  """
  mesh = mesh if mesh is not None else local_mesh()
  batch_size = _rounded(settings.batch_size, parallel.data_parallel_size(mesh))
  # Dropout masks from XLA's RngBitGenerator: threefry bits cost more than the model on CPU.
  dropout_rng = jax.random.key(settings.seed + 1, impl="unsafe_rbg")
  params = init_params(model, data.max_len, settings.seed, mesh)
  optimizer = make_optimizer(settings)
  opt_state = jax.device_put(optimizer.init(params), parallel.replicated(mesh))
  step_fn = make_train_step(model, optimizer, parallel.replicated(mesh), objective)
  scorer = scorer or Scorer(model, mesh, settings.eval_batch_size)

  # A fresh run: stale checkpoints would shadow the new best.
  files.rmtree(checkpoint_dir)
  manager = ocp.CheckpointManager(
      files.abspath(checkpoint_dir),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
  shuffle = np.random.default_rng(settings.seed)
  best, best_epoch, history, step = -1.0, 0, [], 0
  start = time.perf_counter()
  try:
    for epoch in range(1, settings.max_epochs + 1):
      t0 = time.perf_counter()
      losses = []
      order = shuffle.permutation(len(data.train))
      for idx, weights in _padded_batches(len(data.train), batch_size, order):
        batch = parallel.global_batch_from_local(
            {"history": data.train.histories[idx], "target": data.train.targets[idx],
             "weights": weights}, mesh)
        params, opt_state, loss = step_fn(params, opt_state, batch["history"], batch["target"],
                                          batch["weights"], jax.random.fold_in(dropout_rng, step))
        losses.append(loss)
        step += 1
      loss = float(np.mean(jax.device_get(losses)))
      if not np.isfinite(loss):  # NaN scores would tie every item and read as rank 0
        raise UserError(f"training diverged: the loss is {loss} in epoch {epoch}; lower "
                        f"config.train.learning_rate (now {settings.learning_rate})")
      _, ranks = scorer(params, data.valid, keep_scores=False)
      metrics = ranking_metrics(ranks, ks=(1, 10, 20))
      seconds = time.perf_counter() - t0
      history.append({"epoch": epoch, "loss": loss, "seconds": seconds,
                      **{f"valid_{k}": v for k, v in metrics.items()}})
      improved = metrics[SELECT_METRIC] > best
      log(f"[baseline] epoch {epoch:3d} loss {loss:.4f} valid NDCG@10 {metrics['NDCG@10']:.4f} "
          f"HR@10 {metrics['HR@10']:.4f} ({seconds:.1f}s){' *' if improved else ''}")
      if improved:
        best, best_epoch = metrics[SELECT_METRIC], epoch
        manager.save(epoch, args=ocp.args.StandardSave(params))
        manager.wait_until_finished()  # the next step donates these buffers
      elif epoch - best_epoch >= settings.patience:
        log(f"[baseline] early stop: no better validation {SELECT_METRIC} for "
            f"{settings.patience} epochs; best epoch {best_epoch}")
        break
  finally:
    manager.close()
  best_params = restore_best(checkpoint_dir, params)
  return TrainResult(params=best_params, best_epoch=best_epoch, epochs_run=len(history),
                     seconds=time.perf_counter() - start, history=history)
