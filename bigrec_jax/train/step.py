"""The jitted training step (gradient accumulation inside one program) and the eval step.

Two modes share one step. LoRA (`lora_config` given): the trainable tree is the adapters, and
the frozen base weights come in as a plain, non-donated argument already placed in their
shardings, so a step neither copies nor differentiates them. Full fine-tuning (`lora_config`
None): the trainable tree is every base weight (float32 master copies); the frozen argument is
None. Either way the trainable tree, its gradients and the AdamW moments carry the parameters'
logical axes, so `parallel.LOGICAL_RULES` shards all three over `fsdp` (ZeRO-3 style: each
device holds 1/fsdp of every weight and moment; XLA gathers a layer's weights for its matmuls
and reduce-scatters their gradients) while the batch is split over `data` x `fsdp`.

Why it looks the way it does:
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
from jax.sharding import Mesh, NamedSharding

from bigrec_jax import parallel
from bigrec_jax.model import (LlamaConfig, LoraConfig, abstract_variables, forward,
                              forward_shared_prefix, output_weight)
from bigrec_jax.model import lora as lora_lib

IGNORE_INDEX = -100


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. `rng` is raw key data (checkpoint friendly)."""
  step: jax.Array  # int32 scalar: optimizer updates applied so far
  trainable: Any  # the LoRA tree, or (full fine-tuning) the model's params
  opt_state: Any
  rng: jax.Array  # uint32 key data of the run's dropout key

  @property
  def lora(self):
    """The adapters of a LoRA run (the trainable tree under its LoRA name)."""
    return self.trainable


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


def _ce_and_unit_grad(hidden, weight, targets, vocab_major: bool, chunk: int,
                      train_weight: bool = False):
  """Sum of token CE, its gradient w.r.t. hidden and (if `train_weight`) w.r.t. the output
  weight, one chunk of positions at a time (None when the weight is frozen)."""
  b, t, d = hidden.shape
  n = t // chunk
  hs = hidden.reshape(b, n, chunk, d).swapaxes(0, 1)
  ts = targets.reshape(b, n, chunk).swapaxes(0, 1)
  w = weight.astype(hidden.dtype)
  logits_eq = "bcd,vd->bcv" if vocab_major else "bcd,dv->bcv"
  back_eq = "bcv,vd->bcd" if vocab_major else "bcv,dv->bcd"
  weight_eq = "bcv,bcd->vd" if vocab_major else "bcv,bcd->dv"

  def body(carry, xs):
    total, d_w = carry
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
    if train_weight:
      d_w = d_w + jnp.einsum(weight_eq, p, h.astype(jnp.float32))
    return (total, d_w), dh

  d_w0 = jnp.zeros(weight.shape, jnp.float32) if train_weight else None
  (total, d_w), dh = jax.lax.scan(body, (jnp.zeros((), jnp.float32), d_w0), (hs, ts))
  return total, dh.swapaxes(0, 1).reshape(b, t, d), d_w


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def fused_token_ce(hidden, weight, targets, vocab_major: bool = True, chunk: int = 64,
                   train_weight: bool = False):
  """Sum over positions with target >= 0 of -log softmax(hidden @ W)[target].

  Differentiable w.r.t. `hidden`, and w.r.t. the output weight when `train_weight` (full
  fine-tuning; in LoRA training it is frozen and its gradient is never formed).
  """
  return _ce_and_unit_grad(hidden, weight, targets, vocab_major, chunk, train_weight)[0]


def _fused_fwd(hidden, weight, targets, vocab_major, chunk, train_weight):
  total, dh, d_w = _ce_and_unit_grad(hidden, weight, targets, vocab_major, chunk, train_weight)
  d_w = None if d_w is None else d_w.astype(weight.dtype)
  return total, (dh.astype(hidden.dtype), d_w, weight, targets)


def _fused_bwd(vocab_major, chunk, train_weight, res, g):
  dh, d_w, weight, targets = res
  if d_w is None:
    d_w = jnp.zeros_like(weight)  # frozen: never used, removed by XLA
  else:
    d_w = d_w * g.astype(d_w.dtype)
  zero_t = jnp.zeros(targets.shape, jax.dtypes.float0)
  return (dh * g.astype(dh.dtype), d_w, zero_t)


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
  `lora` None: full fine-tuning, so the output weight (the tied embedding or lm_head) gets its
  gradient from the fused CE too.
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
  return fused_token_ce(hidden, weight, targets, vocab_major, chunk, lora is None), count


# ----------------------------------------------------------------------------------------------
# shardings and state
#
# `lora_config` None everywhere below means full fine-tuning: the trainable tree is the params.


def lora_shardings(model_config: LlamaConfig, lora_config: LoraConfig, mesh: Mesh):
  shapes, axes = abstract_variables(model_config, lora_config)
  return parallel.tree_shardings(axes["lora"], mesh, shapes["lora"])


def param_shardings(model_config: LlamaConfig, mesh: Mesh):
  """Where the base weights live (what `load_model(mesh=...)` produces): `embed` over fsdp."""
  shapes, axes = abstract_variables(model_config)
  return parallel.tree_shardings(axes["params"], mesh, shapes["params"])


def trainable_shardings(model_config: LlamaConfig, lora_config: LoraConfig | None, mesh: Mesh):
  """Shardings of what the optimizer updates: the adapters, or every base weight."""
  if lora_config is None:
    return param_shardings(model_config, mesh)
  return lora_shardings(model_config, lora_config, mesh)


def _abstract_trainable(model_config: LlamaConfig, lora_config: LoraConfig | None):
  if lora_config is None:
    return abstract_variables(model_config)[0]["params"]
  return jax.eval_shape(lambda: lora_lib.init_lora(model_config, lora_config, jax.random.key(0)))


def state_shardings(model_config: LlamaConfig, lora_config: LoraConfig | None,
                    optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
  """Shardings of the TrainState: optimizer moments follow their trainable leaf (so in full
  fine-tuning each moment is sharded exactly like its weight), the rest replicated."""
  trainable_sh = trainable_shardings(model_config, lora_config, mesh)
  opt_abstract = jax.eval_shape(optimizer.init, _abstract_trainable(model_config, lora_config))
  rep = parallel.replicated(mesh)
  opt_sh = optax.tree_map_params(optimizer, lambda _, s: s, opt_abstract, trainable_sh,
                                 transform_non_params=lambda _: rep,
                                 is_leaf=lambda x: isinstance(x, NamedSharding))
  return TrainState(step=rep, trainable=trainable_sh, opt_state=opt_sh, rng=rep)


def init_state(model_config: LlamaConfig, lora_config: LoraConfig | None,
               optimizer: optax.GradientTransformation, seed: int, mesh: Mesh,
               params=None) -> TrainState:
  """The run's first state, already sharded: fresh adapters (PEFT init), or (full fine-tuning)
  a float32 copy of `params`, the base weights to start from; optimizer state; dropout key.

  The copy matters: the step donates its state, and the caller's params must survive it.
  """
  if (lora_config is None) != (params is not None):
    raise ValueError("init_state: pass params exactly when lora_config is None (full mode)")
  shardings = state_shardings(model_config, lora_config, optimizer, mesh)

  def make(params):
    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    if lora_config is None:
      # A real copy: jit would hand an unchanged input back as the same buffer.
      trainable = jax.tree.map(lambda x: jnp.copy(x.astype(jnp.float32)), params)
    else:
      trainable = lora_lib.init_lora(model_config, lora_config, init_key)
    return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                      opt_state=optimizer.init(trainable),
                      rng=jax.random.key_data(dropout_key))

  in_sh = None if params is None else (param_shardings(model_config, mesh),)
  return jax.jit(make, in_shardings=in_sh, out_shardings=shardings)(params)


def batch_spec_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Rows along the data-parallel axes, everything else replicated."""
  return parallel.batch_sharding(mesh, ndim)


def _model_inputs(lora_config: LoraConfig | None, frozen, trainable):
  """(params, lora) of the forward pass from the step's frozen and trainable arguments."""
  if lora_config is None:
    return trainable, None
  return frozen, trainable


# ----------------------------------------------------------------------------------------------
# steps


def make_train_step(model_config: LlamaConfig, lora_config: LoraConfig | None,
                    optimizer: optax.GradientTransformation, mesh: Mesh, *,
                    loss_chunk_tokens: int = 1024, label_window: int | None = None,
                    prefix_len: int = 0):
  """Returns `step(state, frozen, batch) -> (state, metrics)`, jitted with explicit shardings.

  frozen: the base weights in LoRA mode, None in full fine-tuning (`lora_config` None).
  batch: {"input_ids", "attention_mask", "labels"} int32 [rows, accum, T] with rows sharded
  over the data-parallel axes; micro-batch i of the step is batch[:, i]. The state is donated.
  metrics: loss (mean token CE), grad_norm, label_tokens, tokens (real tokens), ok (finite).
  """
  state_sh = state_shardings(model_config, lora_config, optimizer, mesh)
  frozen_sh = None if lora_config is None else param_shardings(model_config, mesh)
  batch_sh = batch_spec_sharding(mesh, 3)
  rep = parallel.replicated(mesh)
  use_dropout = lora_config is not None and lora_config.dropout > 0

  def micro_loss(trainable, frozen, micro, rng):
    params, lora = _model_inputs(lora_config, frozen, trainable)
    return token_ce_sum(model_config, params, lora, lora_config, micro["input_ids"],
                        micro["attention_mask"], micro["labels"],
                        rng if use_dropout else None, loss_chunk_tokens=loss_chunk_tokens,
                        label_window=label_window, prefix_len=prefix_len)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def step(state: TrainState, frozen, batch):
    batch = {k: jnp.swapaxes(v, 0, 1) for k, v in batch.items()}  # [accum, rows, T]
    accum = batch["input_ids"].shape[0]
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    # The accumulator is sharded like the weights: each device sums only its own shard of every
    # micro-batch's gradient (XLA reduce-scatters it), never a full copy.
    zeros = jax.tree.map(lambda x, s: jax.lax.with_sharding_constraint(jnp.zeros_like(x), s),
                         state.trainable, state_sh.trainable)

    def body(carry, xs):
      grads, loss_sum = carry
      i, micro = xs
      (ce, _), g = grad_fn(state.trainable, frozen, micro, jax.random.fold_in(step_key, i))
      return (jax.tree.map(jnp.add, grads, g), loss_sum + ce), None

    (grads, loss_sum), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)),
                                        (jnp.arange(accum), batch))
    count = jnp.sum(shift_targets(batch["labels"].reshape(-1, batch["labels"].shape[-1])) >= 0)
    denom = jnp.maximum(count, 1).astype(jnp.float32)
    grads = jax.tree.map(lambda g: g / denom, grads)
    loss = loss_sum / denom
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = TrainState(step=state.step + ok.astype(jnp.int32),
                           trainable=keep(trainable, state.trainable),
                           opt_state=keep(opt_state, state.opt_state), rng=state.rng)
    metrics = {"loss": loss, "grad_norm": grad_norm, "label_tokens": count,
               "tokens": jnp.sum(batch["attention_mask"]), "ok": ok}
    return new_state, metrics

  return jax.jit(step, in_shardings=(state_sh, frozen_sh, batch_sh),
                 out_shardings=(state_sh, rep), donate_argnums=(0,))


def make_eval_step(model_config: LlamaConfig, lora_config: LoraConfig | None, mesh: Mesh, *,
                   loss_chunk_tokens: int = 1024, label_window: int | None = None,
                   prefix_len: int = 0):
  """Returns `eval_step(frozen, trainable, batch) -> {"ce_sum", "label_tokens"}` (no dropout).

  frozen / trainable as in `make_train_step` (LoRA: base params and adapters; full: None and
  the params). batch arrays are [rows, T]; sums let the caller form the exact token mean.
  """
  trainable_sh = trainable_shardings(model_config, lora_config, mesh)
  frozen_sh = None if lora_config is None else param_shardings(model_config, mesh)
  batch_sh = batch_spec_sharding(mesh, 2)
  rep = parallel.replicated(mesh)

  def evaluate(frozen, trainable, batch):
    params, lora = _model_inputs(lora_config, frozen, trainable)
    ce, count = token_ce_sum(model_config, params, lora, lora_config, batch["input_ids"],
                             batch["attention_mask"], batch["labels"],
                             loss_chunk_tokens=loss_chunk_tokens, label_window=label_window,
                             prefix_len=prefix_len)
    return {"ce_sum": ce, "label_tokens": count}

  return jax.jit(evaluate, in_shardings=(frozen_sh, trainable_sh, batch_sh), out_shardings=rep)
