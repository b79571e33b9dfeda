"""The hand-written gradients and dropout of model/layers.py against plain autodiff."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigrec_jax.model.layers import attention, dropout, lora_delta, matmul


def _naive_attention(q, k, v, query_slots, key_valid):
  """Repeated K/V heads and jax.nn.softmax, differentiated by autodiff."""
  b, t, h, hd = q.shape
  g = h // k.shape[2]
  kr, vr = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
  scores = jnp.einsum("bthd,bshd->bhts", q, kr) / math.sqrt(hd)
  causal = jnp.arange(k.shape[1])[None, :] <= query_slots[:, None]
  mask = causal[None, None] & key_valid[:, None, None, :]
  probs = jax.nn.softmax(jnp.where(mask, scores, jnp.finfo(jnp.float32).min), axis=-1)
  return jnp.einsum("bhts,bshd->bthd", probs, vr).reshape(b, t, h * hd)


@pytest.mark.parametrize("heads,kv_heads,causal_block", [(6, 2, 0), (4, 4, 0), (3, 1, 0),
                                                         (6, 2, 4), (3, 1, 2)])
def test_attention_value_and_gradients_match_autodiff_softmax(heads, kv_heads, causal_block):
  """Also with causal blocks (9 positions in blocks of 4 or 2, the last one short)."""
  rng = np.random.default_rng(heads)
  b, t, hd = 2, 9, 8
  q = jnp.asarray(rng.normal(size=(b, t, heads, hd)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(b, t, kv_heads, hd)), jnp.float32) for _ in range(2))
  key_valid = jnp.asarray([[0, 0, 0] + [1] * (t - 3), [1] * t], bool)  # row 0 left-padded
  slots = jnp.arange(t)
  # Padding queries get no cotangent, as in training (their outputs reach no loss).
  weight = jnp.asarray(rng.normal(size=(b, t, heads * hd)), jnp.float32) * key_valid[..., None]
  ours_fn = lambda q, k, v, s, kv: attention(q, k, v, s, kv, causal_block=causal_block)
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v, slots, key_valid) * weight)
  real = np.asarray(key_valid)
  # Compiled: run eagerly, the custom VJP and its folded reshapes dispatch op by op (~5x slower).
  ours = np.asarray(jax.jit(ours_fn)(q, k, v, slots, key_valid))
  ref = np.asarray(jax.jit(_naive_attention)(q, k, v, slots, key_valid))
  np.testing.assert_allclose(ours[real], ref[real], atol=1e-5)
  grads = jax.jit(jax.grad(loss(ours_fn), argnums=(0, 1, 2)))(q, k, v)
  ref_grads = jax.jit(jax.grad(loss(_naive_attention), argnums=(0, 1, 2)))(q, k, v)
  for name, g, r in zip("qkv", grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=2e-5, err_msg=name)


def test_lora_delta_value_and_gradients_match_autodiff():
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(2, 5, 12)), jnp.float32)
  a = jnp.asarray(rng.normal(size=(12, 3)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(3, 7)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
  ours = lambda h, a, b: jnp.sum(lora_delta(h, a, b, 2.0) * w)
  plain = lambda h, a, b: jnp.sum(jnp.dot(jnp.dot(h, a), b) * 2.0 * w)
  np.testing.assert_allclose(ours(h, a, b), plain(h, a, b), rtol=1e-6)
  for g, r in zip(jax.grad(ours, (0, 1, 2))(h, a, b), jax.grad(plain, (0, 1, 2))(h, a, b)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("operand_dtype", [None, jnp.bfloat16])
def test_matmul_value_and_gradients_match_autodiff(operand_dtype):
  """layers.matmul (base-weight products): plain x @ w in float32; with bfloat16 operands the
  autodiff of the same cast-then-dot expression, forward and both gradients."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 5, 12)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(12, 7)), jnp.float32)
  c = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
  dt = operand_dtype or jnp.float32
  ours = lambda x, w: jnp.sum(matmul(x, w, operand_dtype) * c)
  plain = lambda x, w: jnp.sum(jnp.dot(x.astype(dt), w.astype(dt),
                                       preferred_element_type=jnp.float32) * c)
  np.testing.assert_allclose(ours(x, w), plain(x, w), rtol=1e-5)
  tol = 1e-5 if operand_dtype is None else 2e-2  # the backward casts the cotangent too
  for g, r in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(plain, (0, 1))(x, w)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=tol, atol=tol * 10)
  if operand_dtype is None:  # float32: exactly x @ w
    np.testing.assert_allclose(np.asarray(matmul(x, w)), np.asarray(x @ w), rtol=1e-6)


def test_dropout_rate_scale_and_key_dependence():
  x = jnp.ones((64, 257), jnp.float32)  # odd size: the last 32-bit draw is half used
  y = np.asarray(dropout(x, 0.05, jax.random.key(0)))
  dropped = (y == 0).mean()
  assert abs(dropped - 0.05) < 0.01, dropped
  kept = y[y != 0]
  np.testing.assert_allclose(kept, 65536 / (65536 - round(0.05 * 65536)), rtol=1e-6)
  assert abs(y.mean() - 1.0) < 0.02  # inverted dropout keeps the expectation
  y2 = np.asarray(dropout(x, 0.05, jax.random.key(1)))
  assert (y2 != y).any()
  np.testing.assert_array_equal(np.asarray(dropout(x, 0.05, jax.random.key(0))), y)
  np.testing.assert_array_equal(np.asarray(dropout(x, 0.0, jax.random.key(0))), np.asarray(x))
