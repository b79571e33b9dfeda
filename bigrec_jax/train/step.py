"""The jitted LoRA training step (gradient accumulation inside one program) and the eval step.

Why it looks the way it does:
- Only the LoRA tree is differentiated; base weights come in as a plain, non-donated argument
  already placed in their shardings, so a step neither copies nor differentiates them.
- The cross-entropy is fused with the output projection (`fused_token_ce`): logits are made a
  chunk of positions at a time and the gradient w.r.t. the hidden states is formed in the same
  pass, so the [B, T, vocab] logits and their gradient never exist in full. Same FLOPs as
  autodiff, far less memory traffic (and memory: 7B/32k-vocab logits of a 4x512 batch are 256 MB).
- The loss is the mean token CE over every label position of the whole effective batch (sum over
  micro-batches divided by the total label count), so 4 micro-batches of 1 equal one batch of 4
  and the result does not depend on how the batch is split over devices.
- A non-finite loss or gradient leaves the state unchanged (the caller stops the run), so the
  last good state survives even though the step donates its input.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bigrec_jax import parallel
from bigrec_jax.model import (LlamaConfig, LoraConfig, abstract_variables, forward,
                              forward_shared_prefix, output_weight)
from bigrec_jax.model import lora as lora_lib

IGNORE_INDEX = -100


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. `rng` is raw key data (checkpoint friendly)."""
  step: jax.Array  # int32 scalar: optimizer updates applied so far
  lora: Any
  opt_state: Any
  rng: jax.Array  # uint32 key data of the run's dropout key


def shift_targets(labels: jax.Array) -> jax.Array:
  """Position t is trained to predict labels[t + 1]; the last position predicts nothing."""
  pad = jnp.full((labels.shape[0], 1), IGNORE_INDEX, labels.dtype)
  return jnp.concatenate([labels[:, 1:], pad], axis=1)


def _chunk_len(t: int, batch: int, chunk_tokens: int) -> int:
  """The largest divisor of t with batch * chunk <= chunk_tokens (at least 1)."""
  best = 1
  for c in range(1, t + 1):
    if t % c == 0 and batch * c <= max(chunk_tokens, batch):
      best = c
  return best


def _ce_and_unit_grad(hidden, weight, targets, vocab_major: bool, chunk: int):
  """Sum of token CE and its gradient w.r.t. hidden, one chunk of positions at a time."""
  b, t, d = hidden.shape
  n = t // chunk
  hs = hidden.reshape(b, n, chunk, d).swapaxes(0, 1)
  ts = targets.reshape(b, n, chunk).swapaxes(0, 1)
  w = weight.astype(hidden.dtype)
  logits_eq = "bcd,vd->bcv" if vocab_major else "bcd,dv->bcv"
  back_eq = "bcv,vd->bcd" if vocab_major else "bcv,dv->bcd"

  def body(total, xs):
    h, tgt = xs
    logits = jnp.einsum(logits_eq, h, w, preferred_element_type=jnp.float32)
    valid = tgt >= 0
    hit = jnp.arange(logits.shape[-1], dtype=tgt.dtype) == tgt[..., None]
    m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    e = jnp.exp(logits - m)
    s = jnp.sum(e, axis=-1, keepdims=True)
    lse = (m + jnp.log(s))[..., 0]
    picked = jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)
    total = total + jnp.sum(jnp.where(valid, lse - picked, 0.0))
    p = (e / s - hit.astype(jnp.float32)) * valid[..., None].astype(jnp.float32)
    dh = jnp.einsum(back_eq, p.astype(w.dtype), w, preferred_element_type=jnp.float32)
    return total, dh

  total, dh = jax.lax.scan(body, jnp.zeros((), jnp.float32), (hs, ts))
  return total, dh.swapaxes(0, 1).reshape(b, t, d)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def fused_token_ce(hidden, weight, targets, vocab_major: bool = True, chunk: int = 64):
  """Sum over positions with target >= 0 of -log softmax(hidden @ W)[target].

  Differentiable w.r.t. `hidden` only (the output weight is frozen in LoRA training).
  """
  return _ce_and_unit_grad(hidden, weight, targets, vocab_major, chunk)[0]


def _fused_fwd(hidden, weight, targets, vocab_major, chunk):
  total, dh = _ce_and_unit_grad(hidden, weight, targets, vocab_major, chunk)
  return total, (dh.astype(hidden.dtype), weight, targets)


def _fused_bwd(vocab_major, chunk, res, g):
  dh, weight, targets = res
  zero_w = jnp.zeros_like(weight)  # frozen: never used, removed by XLA
  zero_t = jnp.zeros(targets.shape, jax.dtypes.float0)
  return (dh * g.astype(dh.dtype), zero_w, zero_t)


fused_token_ce.defvjp(_fused_fwd, _fused_bwd)


def token_ce_sum(model_config: LlamaConfig, params, lora, lora_config: LoraConfig | None,
                 input_ids, attention_mask, labels, dropout_rng=None, *,
                 loss_chunk_tokens: int = 1024, label_window: int | None = None,
                 prefix_len: int = 0) -> tuple[jax.Array, jax.Array]:
  """(sum of token CE over label positions, number of label positions) of one micro-batch.

  `loss_chunk_tokens` <= 0 uses plain logits + log_softmax (the reference formulation).
  `label_window`: every label of the batch lies in its last `label_window` positions (left
  padding, loss on the response only), so the output projection + CE run on those alone; with
  SmolLM2's 49k vocabulary that projection is ~20% of a step's FLOPs over the whole prompt.
  `prefix_len` > 0: every row begins with the same `prefix_len` tokens, run once for the batch
  (model.forward_shared_prefix; tokenize.shared_prefix_length finds it).
  """
  targets = shift_targets(labels)
  count = jnp.sum(targets >= 0).astype(jnp.float32)
  kw = dict(lora=lora, lora_config=lora_config, dropout_rng=dropout_rng)

  def run(output):
    if prefix_len > 0:
      return forward_shared_prefix(model_config, params, input_ids, attention_mask, prefix_len,
                                   output=output, **kw)
    return forward(model_config, params, input_ids, attention_mask, output=output, **kw)[0]

  if loss_chunk_tokens <= 0:
    logits = run("logits")
    valid = targets >= 0
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    return -jnp.sum(jnp.where(valid, picked, 0.0)), count
  hidden = run("hidden")
  weight, vocab_major = output_weight(model_config, params)
  b, t = input_ids.shape
  if label_window is not None and 0 < label_window < t:
    hidden, targets, t = hidden[:, t - label_window:], targets[:, t - label_window:], label_window
  chunk = _chunk_len(t, b, loss_chunk_tokens)
  return fused_token_ce(hidden, weight, targets, vocab_major, chunk), count


# ----------------------------------------------------------------------------------------------
# shardings and state


def lora_shardings(model_config: LlamaConfig, lora_config: LoraConfig, mesh: Mesh):
  shapes, axes = abstract_variables(model_config, lora_config)
  return parallel.tree_shardings(axes["lora"], mesh, shapes["lora"])


def param_shardings(model_config: LlamaConfig, mesh: Mesh):
  """Where the frozen base weights live (what `load_model(mesh=...)` produces)."""
  shapes, axes = abstract_variables(model_config)
  return parallel.tree_shardings(axes["params"], mesh, shapes["params"])


def state_shardings(model_config: LlamaConfig, lora_config: LoraConfig,
                    optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
  """Shardings of the TrainState: optimizer moments follow their LoRA leaf, the rest replicated."""
  lora_sh = lora_shardings(model_config, lora_config, mesh)
  lora_abstract = jax.eval_shape(
      lambda: lora_lib.init_lora(model_config, lora_config, jax.random.key(0)))
  opt_abstract = jax.eval_shape(optimizer.init, lora_abstract)
  rep = parallel.replicated(mesh)
  opt_sh = optax.tree_map_params(optimizer, lambda _, s: s, opt_abstract, lora_sh,
                                 transform_non_params=lambda _: rep,
                                 is_leaf=lambda x: isinstance(x, NamedSharding))
  return TrainState(step=rep, lora=lora_sh, opt_state=opt_sh, rng=rep)


def init_state(model_config: LlamaConfig, lora_config: LoraConfig,
               optimizer: optax.GradientTransformation, seed: int, mesh: Mesh) -> TrainState:
  """Fresh adapters (PEFT init), optimizer state and the run's dropout key, already sharded."""
  shardings = state_shardings(model_config, lora_config, optimizer, mesh)

  def make():
    lora_key, dropout_key = jax.random.split(jax.random.key(seed))
    lora = lora_lib.init_lora(model_config, lora_config, lora_key)
    return TrainState(step=jnp.zeros((), jnp.int32), lora=lora, opt_state=optimizer.init(lora),
                      rng=jax.random.key_data(dropout_key))

  return jax.jit(make, out_shardings=shardings)()


def batch_spec_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Rows along the data-parallel axes, everything else replicated."""
  return parallel.batch_sharding(mesh, ndim)


# ----------------------------------------------------------------------------------------------
# steps


def make_train_step(model_config: LlamaConfig, lora_config: LoraConfig,
                    optimizer: optax.GradientTransformation, mesh: Mesh, *,
                    loss_chunk_tokens: int = 1024, label_window: int | None = None,
                    prefix_len: int = 0):
  """Returns `step(state, params, batch) -> (state, metrics)`, jitted with explicit shardings.

  batch: {"input_ids", "attention_mask", "labels"} int32 [rows, accum, T] with rows sharded
  over the data-parallel axes; micro-batch i of the step is batch[:, i]. The state is donated.
  metrics: loss (mean token CE), grad_norm, label_tokens, tokens (real tokens), ok (finite).
  """
  state_sh = state_shardings(model_config, lora_config, optimizer, mesh)
  params_sh = param_shardings(model_config, mesh)
  batch_sh = batch_spec_sharding(mesh, 3)
  rep = parallel.replicated(mesh)
  use_dropout = lora_config.dropout > 0

  def micro_loss(lora, params, micro, rng):
    return token_ce_sum(model_config, params, lora, lora_config, micro["input_ids"],
                        micro["attention_mask"], micro["labels"],
                        rng if use_dropout else None, loss_chunk_tokens=loss_chunk_tokens,
                        label_window=label_window, prefix_len=prefix_len)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def step(state: TrainState, params, batch):
    batch = {k: jnp.swapaxes(v, 0, 1) for k, v in batch.items()}  # [accum, rows, T]
    accum = batch["input_ids"].shape[0]
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    zeros = jax.tree.map(lambda x, s: jax.lax.with_sharding_constraint(jnp.zeros_like(x), s),
                         state.lora, state_sh.lora)

    def body(carry, xs):
      grads, loss_sum = carry
      i, micro = xs
      (ce, _), g = grad_fn(state.lora, params, micro, jax.random.fold_in(step_key, i))
      return (jax.tree.map(jnp.add, grads, g), loss_sum + ce), None

    (grads, loss_sum), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)),
                                        (jnp.arange(accum), batch))
    count = jnp.sum(shift_targets(batch["labels"].reshape(-1, batch["labels"].shape[-1])) >= 0)
    denom = jnp.maximum(count, 1).astype(jnp.float32)
    grads = jax.tree.map(lambda g: g / denom, grads)
    loss = loss_sum / denom
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.lora)
    lora = optax.apply_updates(state.lora, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = TrainState(step=state.step + ok.astype(jnp.int32), lora=keep(lora, state.lora),
                           opt_state=keep(opt_state, state.opt_state), rng=state.rng)
    metrics = {"loss": loss, "grad_norm": grad_norm, "label_tokens": count,
               "tokens": jnp.sum(batch["attention_mask"]), "ok": ok}
    return new_state, metrics

  return jax.jit(step, in_shardings=(state_sh, params_sh, batch_sh),
                 out_shardings=(state_sh, rep), donate_argnums=(0,))


def make_eval_step(model_config: LlamaConfig, lora_config: LoraConfig, mesh: Mesh, *,
                   loss_chunk_tokens: int = 1024, label_window: int | None = None,
                   prefix_len: int = 0):
  """Returns `eval_step(params, lora, batch) -> {"ce_sum", "label_tokens"}` (no dropout).

  batch arrays are [rows, T]; sums let the caller form the exact token mean over a dataset.
  """
  lora_sh = lora_shardings(model_config, lora_config, mesh)
  params_sh = param_shardings(model_config, mesh)
  batch_sh = batch_spec_sharding(mesh, 2)
  rep = parallel.replicated(mesh)

  def evaluate(params, lora, batch):
    ce, count = token_ce_sum(model_config, params, lora, lora_config, batch["input_ids"],
                             batch["attention_mask"], batch["labels"],
                             loss_chunk_tokens=loss_chunk_tokens, label_window=label_window,
                             prefix_len=prefix_len)
    return {"ce_sum": ce, "label_tokens": count}

  return jax.jit(evaluate, in_shardings=(params_sh, lora_sh, batch_sh), out_shardings=rep)
