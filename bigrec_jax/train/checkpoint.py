"""Orbax checkpoints of a run: train state, best trainable tree so far, the loop's bookkeeping.

One checkpoint = {state: TrainState (LoRA or, in full fine-tuning, all params; optimizer state,
step, RNG), best: the best adapter (or params) so far, meta: JSON (training mode, epoch, data
position, early-stopping counters, fingerprint)}. It is one unit, so a resumed run continues
exactly where the saved one stood. Sharded arrays are written by every process (orbax), each
its own shards. Every checkpoint records what it was made with (`made_with`: train.mode and the
LoRA fields); one made with another mode or LoRA config is refused with a UserError naming the
fields: it is a different run, not a corrupt one, and it stays where it is.

Kept: the latest `keep` checkpoints plus the one with the best validation loss (orbax
preservation policies). Orbax finalises a checkpoint by renaming its temporary directory, so a
process killed mid-save leaves no half checkpoint behind. Bit rot or a truncated file is caught
on restore: every checkpoint's meta stores a fingerprint of all saved arrays, and a checkpoint
that fails to load or to match it is moved aside to `<dir>_corrupt/` with a warning and the
previous one is used.
"""
from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from bigrec_jax import files
from bigrec_jax.files import UserError
from bigrec_jax.train.step import TrainState

_GOLDEN = np.uint32(0x9E3779B1)


def _as_u32(x: jax.Array) -> jax.Array:
  """The raw bits of a leaf as uint32 (floats bitcast, so any changed bit changes the value)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = jnp.dtype(x.dtype).itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size == 2:
    return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  if size == 1:
    return jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
  halves = jax.lax.bitcast_convert_type(x, jnp.uint32)  # 8-byte: [..., 2]
  return halves[..., 0] ^ (halves[..., 1] * _GOLDEN)


@jax.jit
def _fingerprint(tree) -> jax.Array:
  """Position-weighted wrapping sum of all bits: sharding- and reduction-order-independent."""
  total = jnp.zeros((), jnp.uint32)
  for i, leaf in enumerate(jax.tree.leaves(tree)):
    bits = _as_u32(jnp.asarray(leaf))
    index = jnp.arange(bits.size, dtype=jnp.uint32).reshape(bits.shape)
    coef = (index * _GOLDEN + jnp.uint32(2 * i + 7)) | jnp.uint32(1)  # odd: no bit flip cancels
    total = total + jnp.sum(bits * coef, dtype=jnp.uint32) * jnp.uint32(2 * i + 1)
  return total


def fingerprint(tree) -> int:
  return int(jax.device_get(_fingerprint(tree)))


def _trainable_key(mode: str) -> str:
  """The state's trainable tree is saved as "lora" (the original layout) or "params"."""
  return "params" if mode == "full" else "lora"


def _state_dict(state: TrainState, mode: str) -> dict[str, Any]:
  return {"step": state.step, _trainable_key(mode): state.trainable,
          "opt_state": state.opt_state, "rng": state.rng}


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


class CheckpointCorrupt(Exception):
  pass


class ConfigMismatch(UserError):
  """The workdir's checkpoints were made with another training config (mode, LoRA fields)."""


class ModeMismatch(ConfigMismatch):
  """The workdir's checkpoints were written by a run of the other training mode."""


def _show(value) -> str:
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(str(v) for v in value) + ")"
  return str(value)


class Checkpoints:
  """Saves and restores run checkpoints under `directory` (collective on multi-host)."""

  def __init__(self, directory: str, keep: int = 2, *, async_save: bool = True,
               mode: str = "lora", made_with: dict[str, Any] | None = None):
    self.directory = files.abspath(directory)
    self.keep = keep
    self.mode = mode  # "lora" | "full": recorded in every checkpoint's meta
    # {dotted config field: value} the trainable tree depends on (train.mode, lora.*): recorded
    # in every checkpoint and compared on restore.
    self.made_with = {"train.mode": mode, **{k: list(v) if isinstance(v, tuple) else v
                                             for k, v in (made_with or {}).items()}}
    self._async = async_save
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    from orbax.checkpoint import checkpoint_managers as cm

    policy = cm.AnyPreservationPolicy([
        cm.LatestN(n=self.keep),
        cm.BestN(get_metric_fn=lambda m: -float(m["val_loss"]), n=1,
                 keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=self._async)
    return ocp.CheckpointManager(self.directory, item_names=("state", "best", "meta"),
                                 options=options)

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state: TrainState, best_lora, meta: dict[str, Any],
           val_loss: float | None = None) -> None:
    """Saves at `state.step`; meta gets the fingerprint of the arrays saved with it."""
    step = int(jax.device_get(state.step))
    arrays = {"state": _state_dict(state, self.mode), "best": best_lora}
    meta = {**meta, "step": step, "mode": self.mode, "made_with": self.made_with,
            "fingerprint": fingerprint(arrays)}
    if step in self._manager.all_steps():  # same step, newer bookkeeping (e.g. its val loss)
      self._manager.wait_until_finished()
      self._manager.delete(step)
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(arrays["state"]), best=ocp.args.StandardSave(best_lora),
        meta=ocp.args.JsonSave(meta)),
        metrics=None if val_loss is None else {"val_loss": float(val_loss)}, force=True)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def _restore_step(self, step: int, abstract_state: TrainState, state_shardings: TrainState,
                    abstract_best, best_shardings):
    state_target = _abstract(_state_dict(abstract_state, self.mode),
                             _state_dict(state_shardings, self.mode))
    best_target = _abstract(abstract_best, best_shardings)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state_target), best=ocp.args.StandardRestore(best_target),
        meta=ocp.args.JsonRestore()))
    meta = dict(restored["meta"])
    arrays = {"state": restored["state"], "best": restored["best"]}
    got = fingerprint(arrays)
    if meta.get("fingerprint") != got or int(meta.get("step", -1)) != step:
      raise CheckpointCorrupt(f"fingerprint {got} does not match the saved "
                              f"{meta.get('fingerprint')} (step {meta.get('step')})")
    s = restored["state"]
    state = TrainState(step=s["step"], trainable=s[_trainable_key(self.mode)],
                       opt_state=s["opt_state"], rng=s["rng"])
    return state, restored["best"], meta

  def restore_latest(self, abstract_state: TrainState, state_shardings: TrainState,
                     abstract_best, best_shardings):
    """(state, best_lora, meta) of the newest good checkpoint, or None if there is none.

    A checkpoint that cannot be read or whose fingerprint does not match is moved aside with a
    warning and the previous one is tried. One made with another mode or LoRA config raises
    ConfigMismatch (ModeMismatch for the mode) and is left in place.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    recorded = self._saved_meta(steps[0]) if steps else None
    if recorded is not None:
      self._check_made_with(steps[0], recorded)
    for step in steps:
      error = None
      try:
        result = self._restore_step(step, abstract_state, state_shardings, abstract_best,
                                    best_shardings)
      except Exception as e:  # noqa: BLE001 -- any read/parse failure means "corrupt"
        error, result = e, None
        if (step == steps[0] and recorded is not None and "made_with" not in recorded
            and "tree structure" in str(e)):  # made before checkpoints recorded their config
          raise ConfigMismatch(
              f"{self.directory}: checkpoint step {step} holds another trainable tree than this "
              f"run's ({self._mismatch_hint()}); it was made with another LoRA config (not "
              "recorded in checkpoints this old): resume with that run's --config.lora.* or use "
              "a new --workdir") from None
      failed = np.asarray([error is not None], np.int32)
      if jax.process_count() > 1:
        failed = multihost_utils.process_allgather(failed)
      if not np.any(failed):
        return result
      moved = self._quarantine(step)
      logging.warning("checkpoint step %d in %s is corrupt or incomplete (%s); moved it to %s "
                      "and falling back to the previous checkpoint", step, self.directory,
                      _short(error) if error else "failed on another process", moved)
    return None

  def _saved_meta(self, step: int) -> dict[str, Any] | None:
    """A checkpoint's meta; None if unreadable (the corrupt-checkpoint path decides)."""
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      return dict(meta["meta"])
    except Exception:  # noqa: BLE001
      return None

  def _mismatch_hint(self) -> str:
    return ", ".join(f"{k}={_show(v)}" for k, v in self.made_with.items())

  def _check_made_with(self, step: int, meta: dict[str, Any]) -> None:
    saved_mode = str(meta.get("mode", "lora"))  # "lora" before modes existed
    if saved_mode != self.mode:
      raise ModeMismatch(
          f"{self.directory}: checkpoint step {step} is from a train.mode={saved_mode} run, but "
          f"this run has train.mode={self.mode}; resume with --config.train.mode={saved_mode} or "
          "use a new --workdir")
    saved = meta.get("made_with")
    if saved is None:
      return
    changed = [k for k in sorted(set(saved) | set(self.made_with))
               if saved.get(k) != self.made_with.get(k)]
    if changed:
      there = " ".join(f"--config.{k}={_show(saved.get(k))}" for k in changed)
      here = ", ".join(f"{k}={_show(self.made_with.get(k))}" for k in changed)
      raise ConfigMismatch(
          f"{self.directory}: checkpoint step {step} was made with another config ({here} in "
          f"this run); it is a good checkpoint of another run, left in place: resume it with "
          f"{there}, or use a new --workdir")

  def _quarantine(self, step: int) -> str:
    """Moves a bad step directory out of the manager's way (kept for inspection)."""
    self._manager.wait_until_finished()
    target = os.path.join(self.directory + "_corrupt", f"{step}-{int(time.time())}")
    if jax.process_index() == 0:
      files.makedirs(os.path.dirname(target))
      source = os.path.join(self.directory, str(step))
      if files.exists(source):
        files.move(source, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"bigrec_quarantine_{step}")
    self._manager.reload()
    return target


def _short(error: BaseException) -> str:
  text = f"{type(error).__name__}: {error}"
  return text if len(text) < 300 else text[:300] + "..."
