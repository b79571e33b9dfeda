"""`train(config, workdir)`: BIGRec step 1, instruction tuning with early stopping.

`train.mode` = "lora" (the paper: LoRA adapters on a frozen base) or "full" (every weight,
float32 master copies, sharded with the AdamW moments over the mesh's `fsdp` axis).

Layout of workdir:
  checkpoints/        orbax checkpoints (latest `keep_checkpoints` + best validation loss)
  checkpoints_corrupt/  checkpoints that failed to load, moved aside
  tb/                 TensorBoard scalars (process 0 only)
  adapter/            LoRA: best adapter in PEFT format (adapter_config.json + safetensors)
  model/              full: best weights as an HF checkpoint (config.json, model.safetensors,
                      tokenizer files)
  config.json         the run's configuration
  train_summary.json  written last: the run is complete when it exists

The loop is restartable at any point: every `checkpoint_every_steps` steps, after each
validation and on SIGTERM it saves a checkpoint holding the train state, the best adapter and
the loop's bookkeeping; a rerun continues from the newest good one and ends with the same
adapter as an uninterrupted run (batches and dropout are functions of the step number).
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from bigrec_jax import config as config_lib, files, parallel
from bigrec_jax.files import UserError
from bigrec_jax.model import LoraConfig, export as export_lib, lora as lora_lib
from bigrec_jax.model.config import resolve_targets
from bigrec_jax.train import checkpoint as ckpt_lib
from bigrec_jax.train import optimizer as opt_lib
from bigrec_jax.train import step as step_lib

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: "stopped early, rerun to continue"


class TrainingDiverged(UserError):
  """A non-finite loss or gradient: the state of that step was not applied."""


class Preempted(SystemExit):
  """SIGTERM arrived; a checkpoint was written. Rerunning the same command continues."""

  def __init__(self, message: str):
    super().__init__(PREEMPTED_EXIT_CODE)
    self.message = message


# ----------------------------------------------------------------------------------------------
# configuration


def mode_of(config) -> str:
  mode = config.train.mode
  if mode not in opt_lib.MODES:
    raise UserError(f"--config.train.mode must be one of {opt_lib.MODES}, got {mode!r}")
  return mode


def lora_config_of(config) -> LoraConfig:
  try:
    return LoraConfig(rank=int(config.lora.rank), alpha=float(config.lora.alpha),
                      dropout=float(config.lora.dropout),
                      targets=resolve_targets(config.lora.targets))
  except ValueError as e:
    raise UserError(f"--config.lora: {e}") from None


def made_with(config) -> dict[str, Any]:
  """The config fields a checkpoint's trainable tree depends on (besides train.mode)."""
  if mode_of(config) == "full":
    return {}
  return {**{f"lora.{k}": config.lora[k] for k in ("rank", "alpha", "dropout")},
          "lora.targets": lora_config_of(config).targets}  # "all-linear" = the seven names


def data_dirs(config) -> list[str]:
  dirs = [config.data.dir] + list(config.data.extra_train_dirs)
  return [d for d in dirs if d]


def _load_data(config, tokenizer):
  """Tokenized (train, valid) sets of the configured prepared directories."""
  from bigrec_jax.data import prepared, prompts, tokenize

  dirs = data_dirs(config)
  d = config.data
  kw = dict(cutoff_len=d.cutoff_len, train_on_inputs=d.train_on_inputs,
            template=prompts.format_of(d))  # rendered from the rows' ids and their catalog
  rows, titles = prepared.load_training_set(dirs, d.sample, config.seed)
  train = tokenize.tokenize_rows(tokenizer, rows, titles=titles, **kw)
  valid = None
  if d.valid_split and d.valid_sample != 0:
    rows, titles = prepared.load_training_set(dirs, d.valid_sample, config.seed, d.valid_split)
    valid = tokenize.tokenize_rows(tokenizer, rows, titles=titles, **kw)
  return train, valid


# ----------------------------------------------------------------------------------------------
# the loop


class _Stop:
  """SIGTERM -> a flag checked between steps (the handler itself does nothing heavy)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def agreed(self) -> bool:
    """True on every process once any process was asked to stop (checkpoints are collective)."""
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.asarray([int(self.requested)], np.int32))
    return bool(np.any(flags))


class _RemoteEventFile:
  """A TensorBoard event file on an object store, which cannot append: the records are kept in
  memory and each flush rewrites the whole object through the atomic writer."""

  def __init__(self, path: str):
    self.path = path
    self.records = bytearray()

  def write(self, data: bytes) -> None:
    self.records += data

  def flush(self) -> None:
    files.atomic_write(self.path, bytes(self.records))

  def close(self) -> None:
    self.flush()


class _RemoteEventFiles:
  """tensorboardX's writer factory interface (open, directory_check) over the files layer."""

  def open(self, path: str) -> _RemoteEventFile:
    return _RemoteEventFile(path)

  def directory_check(self, path: str) -> None:
    files.makedirs(path)


def summary_writer(logdir: str):
  """A tensorboardX SummaryWriter for a local directory or a URI (gs://...)."""
  from tensorboardX import SummaryWriter, record_writer

  if files.is_remote(logdir):
    # tensorboardX's own gs:// and s3:// writers need google-cloud-storage / boto3; route every
    # remote scheme through the files layer instead.
    record_writer.register_writer_factory(files.scheme(logdir), _RemoteEventFiles())
  return SummaryWriter(logdir)


class _Logs:
  """TensorBoard scalars and the progress bar, on process 0 only."""

  def __init__(self, workdir: str, total: int, start: int):
    self.main = parallel.is_main_process()
    self.writer = None
    self.bar = None
    if self.main:
      from tqdm.auto import tqdm

      self.writer = summary_writer(os.path.join(workdir, "tb"))
      self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if self.writer is not None:
      for k, v in values.items():
        self.writer.add_scalar(k, v, step)

  def progress(self, **postfix) -> None:
    if self.bar is not None:
      self.bar.update(1)
      self.bar.set_postfix(postfix, refresh=False)

  def message(self, text: str) -> None:
    logging.info(text)
    if self.bar is not None:
      self.bar.write(text)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
    if self.bar is not None:
      self.bar.close()


def _to_host(tree):
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def _export_adapter(path: str, lora, lora_config: LoraConfig, model_config, source: str) -> None:
  """PEFT export into a fresh directory, then swapped in (never a half-written adapter/)."""
  host = _to_host(lora)
  if parallel.is_main_process():
    _write_then_swap(path, lambda tmp: lora_lib.export_peft(tmp, host, lora_config, model_config,
                                                            base_model=source))


def _export_model(path: str, params, model_config, tokenizer) -> None:
  """Full fine-tuning's output: an HF checkpoint directory, swapped in like the adapter."""
  host = _to_host(params)
  if parallel.is_main_process():
    _write_then_swap(path, lambda tmp: export_lib.save_pretrained(tmp, host, model_config,
                                                                  tokenizer))


def _write_then_swap(path: str, write) -> None:
  # Locally both moves are renames; on an object store they copy object by object, so only each
  # file is whole there (the stage marker, written after, is what says the directory is done).
  tmp = f"{path}.tmp-{os.getpid()}"
  files.rmtree(tmp)
  write(tmp)
  old = f"{path}.old-{os.getpid()}"
  if files.exists(path):
    files.move(path, old)
  files.move(tmp, path)
  files.rmtree(old)


def _local_train_batch(local: dict[str, np.ndarray], accum: int) -> dict[str, np.ndarray]:
  """[rows, T] -> [rows / accum, accum, T]: micro-batch i is column i (see step.make_train_step)."""
  return {k: v.reshape(v.shape[0] // accum, accum, v.shape[1])
          for k, v in local.items() if k in ("input_ids", "attention_mask", "labels")}


def train(config, workdir: str, **kw) -> dict[str, Any]:
  """`_train` with the config's logical-axis rules (mesh.rules) sharding every array."""
  with parallel.logical_rules(config.mesh.rules):
    return _train(config, workdir, **kw)


def _train(config, workdir: str, *, model=None, train_data=None, valid_data=None) -> dict[str, Any]:
  """Runs (or resumes) training; returns the summary also written to train_summary.json.

  `model` (a LoadedModel), `train_data` / `valid_data` (data.tokenize.Tokenized) replace what
  the config names (tests use tiny models and synthetic sets). Raises TrainingDiverged on a
  non-finite loss and Preempted (exit 143) after checkpointing on SIGTERM.
  """
  from bigrec_jax.data.batching import Batches
  from bigrec_jax.data.tokenize import shared_prefix_length
  from bigrec_jax.model import load_model

  config_lib.check(config, need_data=train_data is None, check_devices=True)
  owns_model = model is None
  workdir = files.abspath(workdir)
  t = config.train
  mesh = parallel.make_mesh(tuple(config.mesh.shape))
  mode = mode_of(config)
  lora_config = lora_config_of(config) if mode == "lora" else None  # None: train every weight
  if model is None:
    model = load_model(config.model.path or None, dtype=config.model.dtype,
                       param_dtype=config.model.param_dtype, mesh=mesh, remat=config.model.remat,
                       matmul_dtype=config.model.matmul_dtype,
                       kernels=config.model.kernels,
                       tokenizer=config.model.tokenizer or None)
  model_config = model.config
  params = jax.device_put(model.params, step_lib.param_shardings(model_config, mesh))
  # The step's frozen argument: the base weights under LoRA; nothing in full fine-tuning, whose
  # weights live (and are updated) in the train state.
  frozen = params if mode == "lora" else None
  if train_data is None:
    train_data, valid_data = _load_data(config, model.tokenizer)
  if len(train_data) == 0:
    raise UserError("the training set is empty")

  dp = parallel.data_parallel_size(mesh)
  accum = t.batch_size // (t.micro_batch_size * dp)
  pad_id = model_config.pad_token_id
  batches = Batches(train_data, t.batch_size, seed=config.seed, shuffle=True,
                    group_by_length=config.data.group_by_length,
                    bucket_multiple=config.data.bucket_multiple, drop_remainder=False,
                    pad_id=pad_id)
  valid_batches = None
  if valid_data is not None and len(valid_data):
    # Sorted by length (the order does not change a sum): less padding, fewer shapes.
    valid_batches = Batches(valid_data, t.eval_batch_size * dp, shuffle=False,
                            group_by_length=True, bucket_multiple=config.data.bucket_multiple,
                            drop_remainder=False, pad_id=pad_id)
  per_epoch = batches.steps_per_epoch
  total = t.max_steps if t.max_steps > 0 else t.num_epochs * per_epoch
  eval_period = per_epoch * t.eval_every_epochs

  optimizer, schedule = opt_lib.from_config(t, total)
  chunk = int(t.loss_chunk_tokens)
  # Batches are left-padded, so every label sits in the last `window` columns of its batch.
  span = max(train_data.label_span(), valid_data.label_span() if valid_data is not None else 0)
  window = -(-span // 8) * 8 if span else None
  # Every example opens with the same instruction tokens: run them once per micro-batch.
  prefix = (shared_prefix_length(train_data, valid_data, training=True)
            if t.share_prompt_prefix else 0)
  step_kw = dict(loss_chunk_tokens=chunk, label_window=window, prefix_len=prefix)
  train_step = step_lib.make_train_step(model_config, lora_config, optimizer, mesh, **step_kw)
  eval_step = step_lib.make_eval_step(model_config, lora_config, mesh, **step_kw)
  state_sh = step_lib.state_shardings(model_config, lora_config, optimizer, mesh)
  trainable_sh = step_lib.trainable_shardings(model_config, lora_config, mesh)

  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not t.resume and files.isdir(ckpt_dir) and files.listdir(ckpt_dir):
    raise UserError(f"{ckpt_dir} already holds checkpoints and --config.train.resume is off: "
                    "use a new --workdir or turn resume on")
  checkpoints = ckpt_lib.Checkpoints(ckpt_dir, keep=t.keep_checkpoints, mode=mode,
                                     made_with=made_with(config))
  fresh = step_lib.init_state(model_config, lora_config, optimizer, config.seed, mesh,
                              params=None if mode == "lora" else params)
  if mode == "full":  # the state holds the weights now: keep no second copy alive
    del params
    if owns_model:
      model.params = None
  restored = None
  if t.resume:
    shapes = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    restored = checkpoints.restore_latest(shapes(fresh), state_sh, shapes(fresh.trainable),
                                          trainable_sh)
  # The step donates the state, so the best adapter (or weights) must be a copy, not a view.
  copy_trainable = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree), out_shardings=trainable_sh)
  if restored is None:
    state, best_lora = fresh, copy_trainable(fresh.trainable)
    meta: dict[str, Any] = {"best_val_loss": None, "best_step": 0, "bad_evals": 0,
                            "evaluated_step": 0, "status": "running", "history": []}
  else:
    state, best_lora, meta = restored
    del fresh
    planned = (meta.get("steps_per_epoch"), meta.get("total_steps"))
    if planned != (per_epoch, total):
      logging.warning("resuming a run planned as %s steps per epoch / %s steps with %s / %s: "
                      "the data order and learning-rate schedule change from here on",
                      *planned, per_epoch, total)
  step = int(jax.device_get(state.step))
  if parallel.is_main_process():
    files.write_json(os.path.join(workdir, "config.json"), config.to_dict())

  logs = _Logs(workdir, total, step)
  if restored is not None:
    logs.message(f"resumed from checkpoint step {step} (epoch {step // per_epoch})")

  def save(val_loss=None):
    meta.update(epoch=step // per_epoch, batch_in_epoch=step % per_epoch,
                steps_per_epoch=per_epoch, total_steps=total)
    checkpoints.save(state, best_lora, meta, val_loss=val_loss)

  def evaluate(stop) -> float | None:
    sums = None
    for k in range(valid_batches.steps_per_epoch):
      if stop.agreed():
        return None
      batch = parallel.global_batch_from_local(
          {n: v for n, v in valid_batches.local_batch(k).items() if n != "position_ids"}, mesh)
      out = eval_step(frozen, state.trainable, batch)
      sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
    sums = jax.device_get(sums)
    return float(sums["ce_sum"] / max(float(sums["label_tokens"]), 1.0))

  try:
    with _Stop() as stop:
      while meta["status"] == "running":
        due = valid_batches is not None and step > 0 and (step % eval_period == 0 or step == total)
        if due and meta["evaluated_step"] != step:
          val_loss = evaluate(stop)
          if val_loss is None:
            raise _preempt(save, step, checkpoints, "during validation")
          _record_eval(meta, step, per_epoch, val_loss, t.early_stopping_patience)
          if meta["best_step"] == step:
            best_lora = copy_trainable(state.trainable)
          logs.scalars(step, {"eval/loss": val_loss})
          logs.message(f"epoch {step / per_epoch:.2f} step {step}: validation loss {val_loss:.4f}"
                       f" (best {meta['best_val_loss']:.4f} at step {meta['best_step']})")
          if meta["status"] == "running" and step >= total:
            meta["status"] = "finished"
          save(val_loss)
          continue
        if step >= total:
          meta["status"] = "finished"
          save()
          break

        if stop.agreed():  # checked before every step: SIGTERM costs at most one step
          raise _preempt(save, step, checkpoints, "")
        started = time.perf_counter()
        local = _local_train_batch(batches.local_batch(step), accum)
        batch = parallel.global_batch_from_local(local, mesh)
        lr = float(schedule(step))
        state, metrics = train_step(state, frozen, batch)
        m = jax.device_get(metrics)
        seconds = time.perf_counter() - started
        if not m["ok"]:
          checkpoints.wait()
          last = checkpoints.latest_step()
          last = (f"the last good checkpoint is step {last} in {ckpt_dir}" if last is not None
                  else "no checkpoint had been written yet")
          raise TrainingDiverged(
              f"training stopped at step {step + 1} (epoch {step // per_epoch + 1}): the "
              f"{'loss' if not math.isfinite(float(m['loss'])) else 'gradient'} is not finite "
              f"(loss {float(m['loss'])}, grad norm {float(m['grad_norm'])}). The update was not "
              f"applied; {last}. Lower "
              "--config.train.learning_rate or set --config.train.max_grad_norm.")
        step += 1
        tokens_per_s = float(m["tokens"]) / max(seconds, 1e-9)
        logs.progress(loss=f"{float(m['loss']):.4f}", tok_s=f"{tokens_per_s:.0f}")
        if step % t.log_every_steps == 0 or step == 1:
          logs.scalars(step, {"train/loss": float(m["loss"]), "train/lr": lr,
                              "train/grad_norm": float(m["grad_norm"]),
                              "train/tokens_per_s": tokens_per_s,
                              "train/epoch": step / per_epoch})
        eval_next = valid_batches is not None and (step % eval_period == 0 or step == total)
        if (t.checkpoint_every_steps and step % t.checkpoint_every_steps == 0
            and not eval_next):
          save()
    checkpoints.close()
  finally:
    logs.close()

  final = best_lora if valid_batches is not None else state.trainable
  if mode == "lora":
    output = {"adapter": os.path.join(workdir, "adapter")}
    _export_adapter(output["adapter"], final, lora_config, model_config, model.source)
  else:
    output = {"model": os.path.join(workdir, "model")}
    _export_model(output["model"], final, model_config, model.tokenizer)
  summary = {"mode": mode, "status": meta["status"], "steps": step, "epochs": step / per_epoch,
             "steps_per_epoch": per_epoch, "total_steps": total, "accumulation_steps": accum,
             "best_val_loss": meta["best_val_loss"], "best_step": meta["best_step"],
             "history": meta["history"], **output,
             "train_examples": len(train_data),
             "valid_examples": len(valid_data) if valid_data is not None else 0,
             "shared_prefix_tokens": prefix,
             # "auto" resolved on this host (step times and the last bits of the losses)
             "matmul_dtype": model_config.matmul_dtype or model_config.dtype,
             "prompt_format": {"template": config.data.prompt_template}}
  if parallel.is_main_process():
    files.write_json(os.path.join(workdir, "train_summary.json"), summary)
  return summary


def _record_eval(meta, step, per_epoch, val_loss, patience) -> None:
  """Early-stopping bookkeeping as HF's EarlyStoppingCallback (strict improvement)."""
  meta["history"].append({"step": step, "epoch": step / per_epoch, "val_loss": val_loss})
  meta["evaluated_step"] = step
  if not math.isfinite(val_loss):
    raise TrainingDiverged(f"validation loss at step {step} is not finite ({val_loss})")
  if meta["best_val_loss"] is None or val_loss < meta["best_val_loss"]:
    meta.update(best_val_loss=val_loss, best_step=step, bad_evals=0)
  else:
    meta["bad_evals"] += 1
    if patience and meta["bad_evals"] >= patience:
      meta["status"] = "early_stopped"


def _preempt(save, step, checkpoints, where: str) -> Preempted:
  save()
  checkpoints.close()
  message = (f"SIGTERM received {where + ' ' if where else ''}at step {step}: checkpoint "
             f"written to {checkpoints.directory}; rerun the same command to continue")
  logging.warning(message)
  import sys

  sys.stderr.write(message + "\n")
  return Preempted(message)
