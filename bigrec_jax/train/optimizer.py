"""AdamW with HF Trainer's schedules: linear warm-up from 0, then linear decay to 0 (the default
and the reference's), cosine decay to 0, or a constant rate.

HF's `get_linear_schedule_with_warmup` gives update k (0-based) the rate
lr * k / warmup during warm-up and lr * (total - k) / (total - warmup) after it, so the first
update of a warmed-up run uses rate 0. optax counts updates from 0 too, so the same formula
reproduces HF's rates step for step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

MODES = ("lora", "full")
# HF `SchedulerType` names: get_{linear,cosine,constant}_schedule_with_warmup.
SCHEDULES = ("linear", "cosine", "constant")


def linear_warmup_decay(learning_rate: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """HF `get_linear_schedule_with_warmup` as an optax schedule of the update count."""
  warmup = max(int(warmup_steps), 0)
  total = max(int(total_steps), 1)

  def schedule(count):
    k = jnp.asarray(count, jnp.float32)
    up = k / max(warmup, 1)
    down = jnp.maximum(0.0, (total - k) / max(total - warmup, 1))
    return learning_rate * jnp.where(k < warmup, up, down)

  return schedule


def warmup_schedule(kind: str, learning_rate: float, warmup_steps: int,
                    total_steps: int) -> optax.Schedule:
  """HF's `get_<kind>_schedule_with_warmup` as an optax schedule of the update count.

  Every kind warms up linearly from 0 as HF does; after it "linear" decays to 0 at
  `total_steps`, "cosine" follows half a cosine period to 0 (HF's num_cycles=0.5) and
  "constant" stays at `learning_rate`.
  """
  if kind == "linear":
    return linear_warmup_decay(learning_rate, warmup_steps, total_steps)
  if kind not in SCHEDULES:
    raise ValueError(f"schedule {kind!r}: choose from {SCHEDULES}")
  warmup = max(int(warmup_steps), 0)
  total = max(int(total_steps), 1)

  def schedule(count):
    k = jnp.asarray(count, jnp.float32)
    up = k / max(warmup, 1)
    if kind == "constant":
      after = jnp.ones_like(k)
    else:
      progress = (k - warmup) / max(total - warmup, 1)
      after = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))
    return learning_rate * jnp.where(k < warmup, up, after)

  return schedule


def hf_decay_mask(params):
  """True where HF Trainer applies weight decay: every weight but biases and norm scales.

  `Trainer.get_decay_parameter_names` leaves out names matching bias / layernorm / rmsnorm /
  norm; ours are `*/bias` and the RMSNorm `scale`s of input_norm, post_norm and final_norm. The
  embedding (tied output weight too) is decayed, as HF does.
  """
  def decays(path, _):
    names = [str(getattr(k, "key", k)) for k in path]
    return not any(n == "bias" or n.endswith("norm") for n in names)

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(learning_rate: float, total_steps: int, *, warmup_steps: int = 20,
                   weight_decay: float = 0.0, max_grad_norm: float = 0.0, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8, decay_mask=None,
                   schedule: str = "linear") -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (torch/HF defaults for betas and eps) with optional global-norm clipping.

  `decay_mask`: None decays every leaf (LoRA: HF decays every adapter weight); full fine-tuning
  passes `hf_decay_mask`. `schedule`: one of SCHEDULES (`warmup_schedule`). Returns the transformation and its schedule (for logging the rate
  of each step).
  """
  schedule = warmup_schedule(schedule, learning_rate, warmup_steps, total_steps)
  adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                      mask=decay_mask)
  if max_grad_norm and max_grad_norm > 0:
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw), schedule
  return adamw, schedule


def from_config(train_config, total_steps: int):
  """`make_optimizer` from the `train` section of configs/default.py."""
  full = train_config.mode == "full"
  return make_optimizer(train_config.learning_rate, total_steps,
                        warmup_steps=train_config.warmup_steps,
                        weight_decay=train_config.weight_decay,
                        max_grad_norm=train_config.max_grad_norm,
                        decay_mask=hf_decay_mask if full else None,
                        schedule=train_config.schedule)
