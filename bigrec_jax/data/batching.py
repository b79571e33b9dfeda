"""Deterministic, resumable, per-process batches of tokenized examples with a few static shapes.

A global batch is planned identically on every process (same seed, same lengths); each process
then pads only its own rows (`parallel.process_share`) and the trainer assembles the global
array with `parallel.global_batch_from_local`. The padded length of a batch is its longest
example rounded up to a multiple of `bucket_multiple` (64), so jit sees at most
cutoff_len / 64 shapes. `group_by_length` (as HF's LengthGroupedSampler) sorts each shuffled
megabatch of `megabatch_factor` batches by length so rows in a batch have similar lengths;
the batch order is then shuffled again.

Step s always yields the same rows for a given seed, so resuming at step s continues exactly.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from bigrec_jax import parallel
from bigrec_jax.data.tokenize import PAD_ID, Tokenized, pad_examples, position_ids
from bigrec_jax.files import UserError


def bucket_length(n: int, multiple: int = 64) -> int:
  """n rounded up to a multiple of `multiple` (at least one multiple)."""
  return max(multiple, math.ceil(n / multiple) * multiple)


class Batches:
  """Plans global batches over `data` and yields this process's share of each step."""

  def __init__(self, data: Tokenized, batch_size: int, *, seed: int = 0, shuffle: bool = True,
               group_by_length: bool = False, bucket_multiple: int = 64,
               fixed_length: int | None = None, padding_side: str = "left", pad_id: int = PAD_ID,
               drop_remainder: bool = True, megabatch_factor: int = 50,
               with_position_ids: bool = False, process_index: int | None = None,
               process_count: int | None = None):
    if batch_size < 1:
      raise UserError(f"batch size must be >= 1, got {batch_size}")
    self.data = data
    self.lengths = data.lengths
    self.batch_size = batch_size
    self.seed = seed
    self.shuffle = shuffle
    self.group_by_length = group_by_length
    self.bucket_multiple = bucket_multiple
    self.fixed_length = fixed_length
    self.padding_side = padding_side
    self.pad_id = pad_id
    self.drop_remainder = drop_remainder
    self.megabatch_factor = megabatch_factor
    self.with_position_ids = with_position_ids
    self.share = parallel.process_share(batch_size, process_index, process_count)
    n = len(data)
    self.steps_per_epoch = n // batch_size if drop_remainder else math.ceil(n / batch_size)
    if self.steps_per_epoch == 0:
      raise UserError(f"{n} examples are fewer than one global batch of {batch_size}")
    if fixed_length is not None and n and int(self.lengths.max()) > fixed_length:
      raise UserError(f"fixed_length {fixed_length} is shorter than the longest example "
                      f"({int(self.lengths.max())} tokens)")
    self._plan_epoch = -1
    self._plan: list[np.ndarray] = []

  @property
  def local_batch_size(self) -> int:
    return self.share[1] - self.share[0]

  def epoch_plan(self, epoch: int) -> list[np.ndarray]:
    """The global batches of one epoch as arrays of row indices (-1 = filler row)."""
    if epoch == self._plan_epoch:
      return self._plan
    n, size = len(self.data), self.batch_size
    rng = np.random.default_rng([self.seed, epoch])
    order = rng.permutation(n) if self.shuffle else np.arange(n)
    order = order[:self.steps_per_epoch * size]
    if self.group_by_length:
      mega = size * self.megabatch_factor
      chunks = [order[k:k + mega] for k in range(0, len(order), mega)]
      order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
    filler = self.steps_per_epoch * size - len(order)
    order = np.concatenate([order, np.full(filler, -1, dtype=order.dtype)])
    plan = list(order.reshape(self.steps_per_epoch, size))
    if self.group_by_length and self.shuffle:
      plan = [plan[i] for i in rng.permutation(len(plan))]
    self._plan_epoch, self._plan = epoch, plan
    return plan

  def global_indices(self, step: int) -> np.ndarray:
    epoch, k = divmod(step, self.steps_per_epoch)
    return self.epoch_plan(epoch)[k]

  def length_of(self, indices: np.ndarray) -> int:
    if self.fixed_length is not None:
      return self.fixed_length
    real = indices[indices >= 0]
    longest = int(self.lengths[real].max()) if real.size else 1
    return bucket_length(longest, self.bucket_multiple)

  def local_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of global step `step`, padded to the global batch's length."""
    indices = self.global_indices(step)
    length = self.length_of(indices)
    start, stop = self.share
    batch = pad_examples(self.data, indices[start:stop], length, side=self.padding_side,
                         pad_id=self.pad_id)
    if self.with_position_ids:
      batch["position_ids"] = position_ids(batch["attention_mask"])
    return batch

  def iterate(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Local batches from `start_step` (a checkpointed position) on; endless when num_steps is None."""
    step = start_step
    while num_steps is None or step < start_step + num_steps:
      yield self.local_batch(step)
      step += 1

  def epoch(self, epoch: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """The local batches of one epoch (e.g. an evaluation pass)."""
    return self.iterate(epoch * self.steps_per_epoch, self.steps_per_epoch)

  def __iter__(self):
    return self.iterate()


def device_batches(batches: Iterator[dict[str, np.ndarray]], mesh) -> Iterator[dict]:
  """Turns each process's local batches into global jax arrays sharded over the batch axes."""
  for local in batches:
    yield parallel.global_batch_from_local(local, mesh)
