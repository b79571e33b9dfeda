"""model/ops.py: the "cpu" and "xla" kernel paths compute one function; the switch really
switches; packed decode weights are refused by lora.merge."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigrec_jax.model import LlamaConfig, LoraConfig, forward, init_params, lora as lora_lib, ops

TINY = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=8)
LC = LoraConfig(rank=4, alpha=8.0, dropout=0.0, targets=("q_proj", "v_proj", "down_proj"))


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  ids = jnp.asarray(rng.integers(3, 40, size=(2, 11)), jnp.int32)
  mask = jnp.ones((2, 11), jnp.int32).at[1, :4].set(0)  # row 1 left-padded
  params = init_params(TINY, jax.random.key(seed))
  lora = jax.jit(lora_lib.init_lora, static_argnums=(0, 1))(TINY, LC, jax.random.key(seed + 1))
  # jitted: one program for every leaf (eagerly, each op compiles on its own for each shape)
  lora = jax.jit(lambda t: jax.tree.map(
      lambda x: x + 0.05 * jax.random.normal(jax.random.key(7), x.shape), t))(lora)
  return params, lora, ids, mask


def _loss(config, params, lora, ids, mask):
  logits, _ = forward(config, params, ids, mask, lora=lora, lora_config=LC)
  real = mask.astype(bool)
  return jnp.sum(jnp.where(real[..., None], jax.nn.log_softmax(logits), 0.0)[..., 5]), logits


@functools.partial(jax.jit, static_argnums=0)
def _logits_and_grads(config, params, lora, ids, mask):
  grads, logits = jax.grad(_loss, argnums=2, has_aux=True)(config, params, lora, ids, mask)
  return logits, grads


@pytest.mark.parametrize("matmul_dtype,tol", [("", 1e-5), ("bfloat16", 2e-2)])
def test_cpu_and_xla_paths_give_the_same_logits_and_lora_gradients(matmul_dtype, tol):
  params, lora, ids, mask = _inputs()
  real = np.asarray(mask, bool)
  out = {}
  for kernels in ("cpu", "xla"):
    config = TINY.replace(kernels=kernels, matmul_dtype=matmul_dtype)
    logits, grads = _logits_and_grads(config, params, lora, ids, mask)
    out[kernels] = np.asarray(logits)[real], grads
  np.testing.assert_allclose(out["cpu"][0], out["xla"][0], rtol=tol, atol=tol)
  for (path, g_cpu), g_xla in zip(jax.tree_util.tree_leaves_with_path(out["cpu"][1]),
                                  jax.tree.leaves(out["xla"][1])):
    scale = float(jnp.abs(g_xla).max())
    assert scale > 0, path
    np.testing.assert_allclose(np.asarray(g_cpu), np.asarray(g_xla), atol=tol * scale,
                               err_msg=jax.tree_util.keystr(path))


def test_the_switch_selects_the_custom_vjps_only_on_the_cpu_path():
  params, lora, ids, mask = _inputs()
  texts = {k: str(jax.make_jaxpr(jax.grad(_loss, argnums=2, has_aux=True), static_argnums=0)(
      TINY.replace(kernels=k), params, lora, ids, mask)) for k in ("cpu", "xla")}
  assert "custom_vjp" in texts["cpu"]
  assert "custom_vjp" not in texts["xla"]


def test_auto_is_cpu_on_a_cpu_backend_and_xla_elsewhere(monkeypatch):
  assert jax.default_backend() == "cpu" and ops.resolve("auto") == "cpu"
  assert ops.resolve("xla") == "xla" and ops.resolve("cpu") == "cpu"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert ops.resolve("auto") == "xla"
  with pytest.raises(ValueError, match="kernels must be one of"):
    TINY.replace(kernels="triton")


def test_merge_refuses_packed_weights_and_merges_the_float_ones():
  from bigrec_jax.generate import decoder

  params, lora, ids, mask = _inputs()
  config = TINY.replace(matmul_dtype="bfloat16", kernels="cpu")
  packed = decoder.cast_projections(config, params)
  assert isinstance(packed["layers"]["q_proj"]["kernel"], ops.PackedHalf)
  np.testing.assert_array_equal(  # the bits are the bfloat16 weight, exactly
      np.asarray(ops.unpack_half(packed["layers"]["q_proj"]["kernel"]).astype(jnp.float32)),
      np.asarray(params["layers"]["q_proj"]["kernel"].astype(jnp.bfloat16).astype(jnp.float32)))
  for fold in (lora_lib.merge, lora_lib.unmerge):
    with pytest.raises(ValueError, match=r"_proj kernel is packed 16-bit bits \(ops.PackedHalf\)"):
      fold(packed, lora, LC)
  raw_bits = jax.tree.map(lambda x: x.bits if isinstance(x, ops.PackedHalf) else x, packed,
                          is_leaf=lambda x: isinstance(x, ops.PackedHalf))
  with pytest.raises(ValueError, match="_proj kernel is uint16, not a float weight"):
    lora_lib.merge(raw_bits, lora, LC)
  # On float weights, merge is the adapter folded in: the same logits as the adapter alongside.
  merged = lora_lib.merge(params, lora, LC)
  run = jax.jit(lambda p, a: forward(TINY, p, ids, mask, lora=a,
                                     lora_config=None if a is None else LC)[0])
  with_adapter, folded = run(params, lora), run(merged, None)
  real = np.asarray(mask, bool)
  np.testing.assert_allclose(np.asarray(folded)[real], np.asarray(with_adapter)[real], atol=1e-5)
  # The xla path keeps 16-bit decode weights as bfloat16 arrays, which merge accepts.
  cast = decoder.cast_projections(TINY.replace(matmul_dtype="bfloat16", kernels="xla"), params)
  assert cast["layers"]["q_proj"]["kernel"].dtype == jnp.bfloat16
  assert lora_lib.merge(cast, lora, LC)["layers"]["q_proj"]["kernel"].dtype == jnp.bfloat16
