"""The jitted step: loss definition, accumulation, fused CE, LoRA-only optimizer state, schedule."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigrec_jax import parallel
from bigrec_jax.data.tokenize import Tokenized, pad_examples, shared_prefix_length
from bigrec_jax.model import LoraConfig, forward, forward_shared_prefix, lora as lora_lib
from bigrec_jax.train import optimizer as opt_lib
from bigrec_jax.train import step as step_lib
from train_tiny import tiny_model, token_set


@pytest.fixture(scope="module")
def tiny():
  return tiny_model(seed=3)


@pytest.fixture(scope="module")
def mesh():
  return parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])


NO_DROPOUT = LoraConfig(dropout=0.0)
_STEPS = {}


def _step_fn(model, lc, mesh, lr):
  """One jitted step per (model config, LoRA config, lr): tests share compilations."""
  key = (model.config, lc, lr)
  if key not in _STEPS:
    opt, _ = opt_lib.make_optimizer(lr, 10, warmup_steps=0)
    _STEPS[key] = (opt, step_lib.make_train_step(model.config, lc, opt, mesh))
  return _STEPS[key]


def _batch(n=4, length=32, seed=0, prompt_len=5):
  data = token_set(n, seed=seed, max_len=length, prompt_len=prompt_len)
  return pad_examples(data, range(n), length)


def _trained_lora(model, lc, batch_rows_accum, mesh, steps=2, lr=1e-2):
  """LoRA after `steps` updates on the same [rows, accum, T] batch, and the losses."""
  opt, step = _step_fn(model, lc, mesh, lr)
  state = step_lib.init_state(model.config, lc, opt, 0, mesh)
  params = jax.device_put(model.params, step_lib.param_shardings(model.config, mesh))
  batch = parallel.global_batch_from_local(batch_rows_accum, mesh)
  losses, compiled = [], []
  for _ in range(steps):
    state, m = step(state, params, batch)
    losses.append(float(m["loss"]))
    compiled.append(step._cache_size())
  assert len(set(compiled)) == 1, "a later step of the same shape recompiled"
  return jax.device_get(state.lora), losses


def _nonzero_lora(model, lc, seed=1):
  lora = lora_lib.init_lora(model.config, lc, jax.random.key(seed))
  return jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(seed + 1), x.shape),
                      lora)


def test_loss_is_mean_token_ce_and_fused_ce_matches_plain_logits(tiny):
  """token_ce_sum equals a direct log-softmax sum (labels shifted by one, -100 ignored), and the
  fused chunked CE has the same value and LoRA gradient as autodiff through full logits."""
  lc = NO_DROPOUT
  lora = _nonzero_lora(tiny, lc)
  b = _batch()
  logits, _ = jax.jit(lambda p, l: forward(tiny.config, p, b["input_ids"], b["attention_mask"],
                                            lora=l, lora_config=lc))(tiny.params, lora)
  logp = np.asarray(jax.nn.log_softmax(logits, -1))
  total, count = 0.0, 0
  for r in range(b["labels"].shape[0]):
    for t in range(b["labels"].shape[1] - 1):
      target = b["labels"][r, t + 1]
      if target != -100:
        total -= logp[r, t, target]
        count += 1

  def loss(lora, chunk):
    ce, n = step_lib.token_ce_sum(tiny.config, tiny.params, lora, lc, b["input_ids"],
                                  b["attention_mask"], b["labels"], loss_chunk_tokens=chunk)
    return ce / n, (ce, n)

  value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (_, (ce_plain, n)), plain = value_and_grad(lora, 0)
  assert int(n) == count
  np.testing.assert_allclose(float(ce_plain), total, rtol=1e-5)
  (_, (ce_fused, _)), fused = value_and_grad(lora, 16)  # 8 positions x 4 rows per chunk
  np.testing.assert_allclose(float(ce_fused), total, rtol=1e-5)
  for p, f in zip(jax.tree.leaves(plain), jax.tree.leaves(fused)):
    np.testing.assert_allclose(np.asarray(f), np.asarray(p), rtol=1e-4, atol=1e-7)


def test_label_window_gives_the_same_loss_and_gradient(tiny):
  """Response-only labels of a left-padded batch: CE over the last `label_span()` columns
  equals CE over all of them, value and LoRA gradient (the window only skips work)."""
  lc = NO_DROPOUT
  lora = _nonzero_lora(tiny, lc)
  data = token_set(4, seed=5, min_len=12, max_len=30, prompt_len=9)
  span = data.label_span()
  lengths = data.lengths
  assert span == int(np.max(lengths - 9 + 1))
  b = pad_examples(data, range(4), 32)
  assert np.all(b["labels"][:, :32 - span + 1] == -100)  # labels start inside the window

  def loss(lora, window):
    ce, n = step_lib.token_ce_sum(tiny.config, tiny.params, lora, lc, b["input_ids"],
                                  b["attention_mask"], b["labels"], loss_chunk_tokens=16,
                                  label_window=window)
    return ce / n, (ce, n)

  value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (_, (ce_all, n_all)), g_all = value_and_grad(lora, None)
  (_, (ce_win, n_win)), g_win = value_and_grad(lora, span)
  assert int(n_all) == int(n_win)
  np.testing.assert_allclose(float(ce_win), float(ce_all), rtol=1e-5)
  for a, w in zip(jax.tree.leaves(g_all), jax.tree.leaves(g_win)):
    np.testing.assert_allclose(np.asarray(w), np.asarray(a), rtol=1e-4, atol=1e-7)
  # A window one column too short drops the first label of the longest response.
  (_, (ce_short, _)), _ = value_and_grad(lora, span - 1)
  assert float(ce_short) < float(ce_all)


def test_shared_prefix_gives_the_same_loss_and_gradient(tiny):
  """Rows opening with the same tokens, loss on the responses: running that prefix once
  (forward_shared_prefix) gives the loss and LoRA gradient of the plain forward (with the label
  window), filler rows (one all padding) included. With whole-row labels the trainer does not
  share (a padding position predicts each row's first token there)."""
  lc = NO_DROPOUT
  lora = _nonzero_lora(tiny, lc)
  rest = token_set(3, seed=7, min_len=4, max_len=20)
  prefix = [11, 12, 13, 14, 15, 16, 17]
  ids = [prefix + rest.example(i)[0].tolist() for i in range(3)]
  data = Tokenized.from_lists(ids, [[-100] * (len(x) - 4) + x[-4:] for x in ids])
  assert shared_prefix_length(data, training=True) == len(prefix)
  whole_rows = Tokenized.from_lists(ids, ids)
  assert shared_prefix_length(whole_rows) == len(prefix)
  assert shared_prefix_length(whole_rows, training=True) == 0
  b = pad_examples(data, [0, 1, 2, -1, -1], 32)  # rows 3, 4: fillers (copies of row 0)
  b["attention_mask"][4] = 0  # row 4: all padding
  assert (b["attention_mask"][:3, 0] == 0).all() and (b["labels"][3:] == -100).all()
  window = data.label_span()

  def loss(lora, prefix_len):
    ce, n = step_lib.token_ce_sum(tiny.config, tiny.params, lora, lc, b["input_ids"],
                                  b["attention_mask"], b["labels"], loss_chunk_tokens=16,
                                  label_window=window, prefix_len=prefix_len)
    return ce / n, (ce, n)

  value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (_, (ce_plain, n_plain)), g_plain = value_and_grad(lora, 0)
  (_, (ce_shared, n_shared)), g_shared = value_and_grad(lora, len(prefix))
  assert int(n_plain) == int(n_shared)
  np.testing.assert_allclose(float(ce_shared), float(ce_plain), rtol=1e-5)
  for a, s in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_shared)):
    np.testing.assert_allclose(np.asarray(s), np.asarray(a), rtol=1e-4, atol=1e-7)
  hidden = forward_shared_prefix(tiny.config, tiny.params, b["input_ids"], b["attention_mask"],
                                 len(prefix), lora=lora, lora_config=lc, output="hidden")
  plain, _ = forward(tiny.config, tiny.params, b["input_ids"], b["attention_mask"], lora=lora,
                     lora_config=lc, output="hidden")
  real = b["attention_mask"].astype(bool)
  np.testing.assert_allclose(np.asarray(hidden)[real], np.asarray(plain)[real], atol=1e-5)


def test_bfloat16_matmuls_give_close_loss_and_gradient(tiny):
  """model.matmul_dtype=bfloat16 (the CPU speed option): loss and LoRA gradient within bfloat16
  rounding of float32's."""
  lc = NO_DROPOUT
  lora = _nonzero_lora(tiny, lc)
  b = _batch()

  def loss(lora, config):
    ce, n = step_lib.token_ce_sum(config, tiny.params, lora, lc, b["input_ids"],
                                  b["attention_mask"], b["labels"], loss_chunk_tokens=16)
    return ce / n

  value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  v32, g32 = value_and_grad(lora, tiny.config)
  v16, g16 = value_and_grad(lora, tiny.config.replace(matmul_dtype="bfloat16"))
  np.testing.assert_allclose(float(v16), float(v32), rtol=1e-2)
  for a, c in zip(jax.tree.leaves(g32), jax.tree.leaves(g16)):
    scale = float(jnp.abs(a).max())
    assert float(jnp.abs(a - c).max()) <= 0.05 * scale + 1e-6


def test_fused_ce_untied_output_head():
  model = tiny_model(seed=4, tie_word_embeddings=False)
  lc = LoraConfig(dropout=0.0)
  b = _batch()
  lora = _nonzero_lora(model, lc)
  ce = jax.jit(lambda p, l, c: step_lib.token_ce_sum(
      model.config, p, l, lc, b["input_ids"], b["attention_mask"], b["labels"],
      loss_chunk_tokens=c)[0], static_argnums=2)
  vals = [ce(model.params, lora, c) for c in (0, 16)]
  np.testing.assert_allclose(float(vals[1]), float(vals[0]), rtol=1e-5)


def test_accumulating_4x1_equals_one_batch_of_4(tiny, mesh):
  b = _batch(n=4)
  as_one = {k: v[:, None, :] for k, v in b.items()}  # [4 rows, 1 micro-batch, T]
  as_four = {k: v[None, :, :] for k, v in b.items()}  # [1 row, 4 micro-batches, T]
  lora1, loss1 = _trained_lora(tiny, NO_DROPOUT, as_one, mesh)
  lora4, loss4 = _trained_lora(tiny, NO_DROPOUT, as_four, mesh)
  np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
  for a, c in zip(jax.tree.leaves(lora1), jax.tree.leaves(lora4)):
    # Adam moves every entry by ~lr per step; 1e-5 is 0.1% of one step.
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-5)
  assert loss1[1] < loss1[0]


def test_optimizer_state_holds_only_lora_entries(smollm2, mesh):
  """Moments exist for LoRA leaves only: no entry mirrors (or is as large as) a base weight."""
  cfg, lc = smollm2.config, LoraConfig()
  opt, _ = opt_lib.make_optimizer(1e-4, 100, max_grad_norm=1.0)
  shapes = jax.eval_shape(lambda: step_lib.init_state(cfg, lc, opt, 0, mesh))
  lora_shapes = {tuple(x.shape) for x in jax.tree.leaves(shapes.lora)}
  base_shapes = {tuple(x.shape) for x in jax.tree.leaves(smollm2.params)}
  opt_leaves = jax.tree.leaves(shapes.opt_state)
  big = [x for x in opt_leaves if x.ndim > 0]
  assert big and all(tuple(x.shape) in lora_shapes for x in big)
  assert not {tuple(x.shape) for x in big} & base_shapes
  n_lora = sum(x.size for x in jax.tree.leaves(shapes.lora))
  assert sum(x.size for x in big) == 2 * n_lora  # Adam mu + nu
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
      shapes.opt_state)[0]]
  assert not any("embed" in p or "kernel" in p or "norm" in p for p in paths)


def test_non_finite_loss_leaves_state_unchanged(tiny, mesh):
  lc = NO_DROPOUT
  params = jax.tree.map(lambda x: x, tiny.params)
  params["embed"] = params["embed"].at[7].set(jnp.nan)
  b = _batch(n=4)
  b["input_ids"][0, -3] = 7
  opt, step = _step_fn(tiny, lc, mesh, 1e-2)
  state = step_lib.init_state(tiny.config, lc, opt, 0, mesh)
  before = jax.device_get(state.lora)
  batch = parallel.global_batch_from_local({k: v[:, None] for k, v in b.items()}, mesh)
  state, m = step(state, jax.device_put(params, step_lib.param_shardings(tiny.config, mesh)), batch)
  assert not bool(m["ok"]) and not np.isfinite(float(m["loss"]))
  assert int(state.step) == 0
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state.lora))):
    np.testing.assert_array_equal(x, y)


def test_schedule_matches_hf_linear_warmup():
  import torch
  from transformers import get_linear_schedule_with_warmup

  lr, warmup, total = 1e-4, 20, 90
  torch_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
  sched = get_linear_schedule_with_warmup(torch_opt, warmup, total)
  ours = opt_lib.linear_warmup_decay(lr, warmup, total)
  for k in range(total + 2):
    np.testing.assert_allclose(float(ours(k)), sched.get_last_lr()[0], rtol=1e-5, atol=1e-12)
    torch_opt.step()
    sched.step()


@pytest.mark.parametrize("kind", ["cosine", "constant"])
def test_other_schedules_match_hf(kind):
  """train.schedule=cosine|constant: HF's get_{kind}_schedule_with_warmup, update by update."""
  import torch
  from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

  lr, warmup, total = 3e-4, 5, 64
  torch_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
  sched = (get_cosine_schedule_with_warmup(torch_opt, warmup, total) if kind == "cosine"
           else get_constant_schedule_with_warmup(torch_opt, warmup))
  ours = opt_lib.warmup_schedule(kind, lr, warmup, total)
  rates = []
  for k in range(total + 2):
    rates.append(float(ours(k)))
    # float32 cosine: absolute error ~1e-5 of lr near the end, where the rate is near 0
    np.testing.assert_allclose(rates[-1], sched.get_last_lr()[0], rtol=1e-5, atol=lr * 1e-5)
    torch_opt.step()
    sched.step()
  linear = opt_lib.warmup_schedule("linear", lr, warmup, total)
  assert any(abs(r - float(linear(k))) > 1e-6 for k, r in enumerate(rates))


def test_real_smollm2_loss_drops_in_a_few_steps(smollm2, bigrec_prompts, mesh):
  """Five steps on two short real prompts (2 x 32 tokens) lower the training loss."""
  tok = smollm2.tokenizer
  ids = [tok(p + '"Fargo"')["input_ids"][-31:] + [tok.eos_token_id] for p in bigrec_prompts[:2]]
  b = {"input_ids": np.asarray(ids, np.int32), "attention_mask": np.ones((2, 32), np.int32),
       "labels": np.asarray(ids, np.int32)}
  _, losses = _trained_lora(smollm2, LoraConfig(), {k: v[:, None] for k, v in b.items()}, mesh,
                            steps=5, lr=2e-3)
  assert all(np.isfinite(losses))
  assert losses[-1] < losses[0] - 0.1, losses


def test_remat_model_trains_to_the_same_lora(tiny, mesh):
  """config.model.remat (recompute each block in the backward pass) changes memory, not results."""
  import dataclasses

  b = {k: v[:, None, :] for k, v in _batch(n=4).items()}
  plain, loss_plain = _trained_lora(tiny, NO_DROPOUT, b, mesh)
  remat = dataclasses.replace(tiny, config=tiny.config.replace(remat=True))
  again, loss_remat = _trained_lora(remat, NO_DROPOUT, b, mesh)
  np.testing.assert_allclose(loss_remat, loss_plain, rtol=1e-5)
  for a, c in zip(jax.tree.leaves(plain), jax.tree.leaves(again)):
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-5)


def test_real_smollm2_lora_gradients_match_peft(smollm2, hf_smollm2, bigrec_prompts, tmp_path):
  """Loss and every LoRA gradient of the real model (left-padded batch, loss on all tokens)
  equal PEFT's backward pass: covers the hand-written attention and LoRA VJPs end to end."""
  import copy

  import torch
  from peft import PeftModel

  lc = LoraConfig(rank=8, alpha=16, dropout=0.0, targets=("q_proj", "v_proj"))
  lora = lora_lib.init_lora(smollm2.config, lc, jax.random.key(0))
  # Non-zero B so that the gradients of A are not trivially zero.
  lora = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(jax.random.key(1), x.shape), lora)
  lora_lib.export_peft(str(tmp_path), lora, lc, smollm2.config)
  enc = smollm2.tokenizer([p[-120:] for p in bigrec_prompts[:2]], return_tensors="np",
                          padding=True)
  ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
  assert (mask[:, 0] == 0).any(), "the batch should exercise left padding"
  labels = np.where(mask > 0, ids, step_lib.IGNORE_INDEX).astype(np.int32)
  # A row's first real token would be predicted from a padding position, whose (fully masked)
  # attention is defined differently by each implementation: leave it out of both losses.
  labels[np.arange(len(ids)), np.argmax(mask, axis=1)] = step_lib.IGNORE_INDEX

  def mean_loss(lora):
    ce, count = step_lib.token_ce_sum(smollm2.config, smollm2.params, lora, lc, ids, mask, labels)
    return ce / count

  loss, grads = jax.value_and_grad(mean_loss)(lora)
  peft_model = PeftModel.from_pretrained(copy.deepcopy(hf_smollm2), str(tmp_path),
                                         is_trainable=True)
  out = peft_model(input_ids=torch.tensor(ids, dtype=torch.long),
                   attention_mask=torch.tensor(mask, dtype=torch.long),
                   labels=torch.tensor(labels, dtype=torch.long))
  out.loss.backward()
  np.testing.assert_allclose(float(loss), out.loss.item(), rtol=1e-4)
  named = dict(peft_model.named_parameters())
  for name, ab in grads["layers"].items():
    for i in range(smollm2.config.num_layers):
      prefix = f"base_model.model.model.layers.{i}.self_attn.{name}"
      ref_a = named[f"{prefix}.lora_A.default.weight"].grad.numpy().T
      ref_b = named[f"{prefix}.lora_B.default.weight"].grad.numpy().T
      for ours, ref in ((np.asarray(ab["a"][i]), ref_a), (np.asarray(ab["b"][i]), ref_b)):
        scale = np.abs(ref).max()
        assert np.abs(ours - ref).max() <= 2e-3 * scale, (name, i)
