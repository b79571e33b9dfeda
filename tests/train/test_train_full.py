"""Full fine-tuning (train.mode=full): the step's gradients and update, AdamW parity with torch
on the real SmolLM2, HF's weight-decay rule, checkpoints of the full state and the mode check."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigrec_jax import parallel
from bigrec_jax.data.tokenize import pad_examples
from bigrec_jax.model import export
from bigrec_jax.train import optimizer as opt_lib
from bigrec_jax.train import step as step_lib
from train_tiny import tiny_model, token_set

FULL = None  # lora_config of full fine-tuning


@pytest.fixture(scope="module")
def tiny():
  return tiny_model(seed=3)


@pytest.fixture(scope="module")
def mesh():
  return parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])


def _batch(n=4, length=32, seed=0, prompt_len=5):
  return pad_examples(token_set(n, seed=seed, max_len=length, prompt_len=prompt_len), range(n),
                      length)


def _mean_loss(model, chunk, b, config=None):
  def loss(params):
    ce, n = step_lib.token_ce_sum(config or model.config, params, None, FULL, b["input_ids"],
                                  b["attention_mask"], b["labels"], loss_chunk_tokens=chunk)
    return ce / n
  return jax.jit(jax.value_and_grad(loss))


def _trained(model, batch_rows_accum, mesh, steps=2, lr=1e-2, **opt_kw):
  opt, _ = opt_lib.make_optimizer(lr, 10, warmup_steps=0, **opt_kw)
  step = step_lib.make_train_step(model.config, FULL, opt, mesh)
  state = step_lib.init_state(model.config, FULL, opt, 0, mesh, params=model.params)
  batch = parallel.global_batch_from_local(batch_rows_accum, mesh)
  losses = []
  for _ in range(steps):
    state, m = step(state, None, batch)
    losses.append(float(m["loss"]))
  return jax.device_get(state), losses


def test_fused_ce_gives_every_weight_the_autodiff_gradient(tiny):
  """With every weight trainable, the fused chunked CE (which now also forms the output weight's
  gradient) equals autodiff through full logits, for the tied embedding (input + output use
  summed in one leaf) and for an untied lm_head."""
  b = _batch()
  for model in (tiny, tiny_model(seed=4, tie_word_embeddings=False)):
    v_plain, g_plain = _mean_loss(model, 0, b)(model.params)
    v_fused, g_fused = _mean_loss(model, 16, b)(model.params)
    np.testing.assert_allclose(float(v_fused), float(v_plain), rtol=1e-5)
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(g_plain)]
    assert ("['lm_head']" in names) != model.config.tie_word_embeddings
    for name, p, f in zip(names, jax.tree.leaves(g_plain), jax.tree.leaves(g_fused)):
      assert float(jnp.abs(p).max()) > 0, name
      np.testing.assert_allclose(np.asarray(f), np.asarray(p), rtol=1e-4, atol=1e-7,
                                 err_msg=name)


def test_full_state_holds_every_weight_once_with_its_moments(smollm2, mesh):
  """The trainable tree is the params (the tied embedding one leaf, no lm_head), float32, and
  Adam keeps exactly two moments per weight, each sharded like its weight."""
  cfg = smollm2.config
  opt, _ = opt_lib.make_optimizer(1e-4, 100, weight_decay=0.01, decay_mask=opt_lib.hf_decay_mask)
  shapes = jax.eval_shape(lambda: step_lib.init_state(cfg, FULL, opt, 0, mesh,
                                                      params=smollm2.params))
  assert jax.tree.structure(shapes.trainable) == jax.tree.structure(smollm2.params)
  assert "lm_head" not in shapes.trainable and cfg.tie_word_embeddings
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes.trainable))
  n_params = sum(x.size for x in jax.tree.leaves(smollm2.params))
  assert 134e6 < n_params < 135e6  # SmolLM2-135M, the embedding counted once
  moments = [x for x in jax.tree.leaves(shapes.opt_state) if x.ndim > 0]
  assert sum(x.size for x in moments) == 2 * n_params


def test_accumulating_4x1_equals_one_batch_of_4_and_bfloat16_matmuls_stay_close(tiny, mesh):
  b = _batch(n=4)
  as_one = {k: v[:, None, :] for k, v in b.items()}
  as_four = {k: v[None, :, :] for k, v in b.items()}
  state1, loss1 = _trained(tiny, as_one, mesh)
  state4, loss4 = _trained(tiny, as_four, mesh)
  np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
  for a, c in zip(jax.tree.leaves(state1.trainable), jax.tree.leaves(state4.trainable)):
    # 1% of one Adam step (lr 1e-2): entries whose gradient is near eps move by lr * g /
    # (|g| + eps), where the two summation orders' rounding shows.
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-4)
  assert loss1[1] < loss1[0]
  # The bfloat16 matmul-operand option trains the same float32 master weights.
  v32, g32 = _mean_loss(tiny, 16, b)(tiny.params)
  v16, g16 = _mean_loss(tiny, 16, b, tiny.config.replace(matmul_dtype="bfloat16"))(tiny.params)
  np.testing.assert_allclose(float(v16), float(v32), rtol=1e-2)
  for a, c in zip(jax.tree.leaves(g32), jax.tree.leaves(g16)):
    assert c.dtype == jnp.float32
    assert float(jnp.abs(a - c).max()) <= 0.05 * float(jnp.abs(a).max()) + 1e-6


def test_weight_decay_mask_is_hf_trainers(smollm2, hf_smollm2):
  """Decayed weights are exactly those HF Trainer decays (all but norms and biases)."""
  from transformers import Trainer

  mask = opt_lib.hf_decay_mask(smollm2.params)
  as_arrays = jax.tree.map(lambda m, p: np.full(p.shape, m, np.float32), mask, smollm2.params)
  ours = {name for name, v in export.hf_tensors(smollm2.config, as_arrays).items() if v.all()}
  assert not any(v.any() and not v.all()
                 for v in export.hf_tensors(smollm2.config, as_arrays).values())
  hf = set(Trainer.get_decay_parameter_names(None, hf_smollm2))
  # HF lists the tied lm_head.weight too: it is the embedding tensor itself (one leaf here).
  assert hf_smollm2.lm_head.weight is hf_smollm2.model.embed_tokens.weight
  assert ours == hf - {"lm_head.weight"} and "model.embed_tokens.weight" in ours


def test_non_finite_loss_leaves_the_weights_unchanged(tiny, mesh):
  opt, _ = opt_lib.make_optimizer(1e-2, 10, warmup_steps=0)
  step = step_lib.make_train_step(tiny.config, FULL, opt, mesh)
  params = dict(tiny.params, embed=tiny.params["embed"].at[7].set(jnp.nan))
  state = step_lib.init_state(tiny.config, FULL, opt, 0, mesh, params=params)
  before = jax.device_get(state.trainable)
  b = _batch(n=4)
  b["input_ids"][0, -3] = 7
  state, m = step(state, None, parallel.global_batch_from_local(
      {k: v[:, None] for k, v in b.items()}, mesh))
  assert not bool(m["ok"]) and int(state.step) == 0
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state.trainable))):
    np.testing.assert_array_equal(x, y)


def test_real_smollm2_full_step_equals_torch_adamw(smollm2, hf_smollm2, bigrec_prompts, mesh):
  """One full fine-tuning step of the real SmolLM2 (left-padded batch, no dropout) against a
  torch AdamW step on transformers' model with the same lr, betas, eps and weight decay (HF's
  decay groups): the same loss; every weight's gradient; our AdamW fed torch's gradients gives
  torch's updated weights to float32 rounding; and the step's own updated weights equal
  torch's wherever the update is well conditioned.

  Why the last split: Adam's first step moves an entry by lr * g / (|g| + eps), about
  lr * sign(g). Where |g| is at the level of the gradients' float32 disagreement (~1e-3 of a
  tensor's largest entry after 30 layers, as for LoRA against PEFT) the sign is noise on both
  sides, so those entries can differ by up to 2 lr whatever the implementation.
  """
  import copy

  import torch
  from transformers import Trainer

  lr, wd, eps = 1e-4, 0.01, 1e-8
  enc = smollm2.tokenizer([p[-120:] + '"Fargo"' for p in bigrec_prompts[:2]],
                          return_tensors="np", padding=True)
  ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
  assert (mask[:, 0] == 0).any(), "the batch should exercise left padding"
  labels = np.where(mask > 0, ids, step_lib.IGNORE_INDEX).astype(np.int32)
  # A row's first real token is predicted from a padding position (see the LoRA parity test).
  labels[np.arange(len(ids)), np.argmax(mask, axis=1)] = step_lib.IGNORE_INDEX

  # torch: HF's two parameter groups (decay / no decay), one AdamW step.
  model = copy.deepcopy(hf_smollm2)
  model.train()
  decay = set(Trainer.get_decay_parameter_names(None, model))
  named = dict(model.named_parameters())
  groups = [{"params": [p for n, p in named.items() if n in decay], "weight_decay": wd},
            {"params": [p for n, p in named.items() if n not in decay], "weight_decay": 0.0}]
  torch_opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=eps)
  out = model(input_ids=torch.tensor(ids, dtype=torch.long),
              attention_mask=torch.tensor(mask, dtype=torch.long),
              labels=torch.tensor(labels, dtype=torch.long))
  out.loss.backward()
  torch_grad = {n: p.grad.numpy().copy() for n, p in named.items()}
  torch_opt.step()
  torch_new = {n: p.detach().numpy().copy() for n, p in named.items()}
  del model, torch_opt, named, groups

  to_hf = lambda tree: export.hf_tensors(smollm2.config, jax.device_get(tree))
  old = to_hf(smollm2.params)
  assert set(old) == set(torch_new)

  # 1) gradients: the mean token CE of the step (fused CE, hand-written VJPs) vs torch's.
  def mean_loss(params):
    ce, n = step_lib.token_ce_sum(smollm2.config, params, None, FULL, ids, mask, labels)
    return ce / n

  grads = to_hf(jax.jit(jax.grad(mean_loss))(smollm2.params))
  for name, ref in torch_grad.items():
    scale = np.abs(ref).max()
    assert scale > 0 and np.abs(grads[name] - ref).max() <= 2e-3 * scale, name
  del grads

  # 2) the update rule alone: our AdamW on torch's gradients, in HF's layout (the rule is
  # elementwise; HF's decay groups by name, which test_weight_decay_mask_is_hf_trainers ties
  # to hf_decay_mask).
  rule, _ = opt_lib.make_optimizer(lr, 10, warmup_steps=0, weight_decay=wd, eps=eps,
                                   decay_mask=lambda tree: {n: n in decay for n in tree})
  updates, _ = rule.update(torch_grad, rule.init(old), old)
  for name, ref in torch_new.items():
    np.testing.assert_allclose(old[name] + np.asarray(updates[name]), ref, rtol=1e-6, atol=1e-7,
                               err_msg=name)
  del updates

  opt, _ = opt_lib.make_optimizer(lr, 10, warmup_steps=0, weight_decay=wd, eps=eps,
                                  decay_mask=opt_lib.hf_decay_mask)

  # 3) the jitted step itself: loss, and the weights where the update is well conditioned.
  step = step_lib.make_train_step(smollm2.config, FULL, opt, mesh)
  state = step_lib.init_state(smollm2.config, FULL, opt, 0, mesh, params=smollm2.params)
  batch = parallel.global_batch_from_local(
      {"input_ids": ids[:, None], "attention_mask": mask[:, None], "labels": labels[:, None]},
      mesh)
  state, metrics = step(state, None, batch)
  np.testing.assert_allclose(float(metrics["loss"]), out.loss.item(), rtol=2e-5)
  ours_new = to_hf(state.trainable)
  checked = total = 0
  for name, ref in torch_new.items():
    g = np.abs(torch_grad[name])
    assert np.abs(ref - old[name]).max() > 0.5 * lr, name  # Adam moves entries by ~lr
    sure = g > np.maximum(1e-2 * g.max(), 100 * eps)  # 5x the gradients' disagreement
    assert sure.any(), name
    checked, total = checked + sure.sum(), total + sure.size
    np.testing.assert_allclose(ours_new[name][sure], ref[sure], rtol=0, atol=1e-6 + 1e-2 * lr,
                               err_msg=name)
  assert checked > 0.05 * total  # the embedding's unused rows have no gradient at all

