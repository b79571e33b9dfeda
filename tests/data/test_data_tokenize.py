"""Tokenization (real SmolLM2 tokenizer), label masking, padding, bucketing and process shares."""
from __future__ import annotations

import numpy as np
import pytest

from bigrec_jax.data import batching, prompts, tokenize
from bigrec_jax.data.tokenize import IGNORE_INDEX
from bigrec_jax.files import UserError


def _row(history, target, domain="movie"):
  return {**prompts.make_fields(domain, history, target), "target_item_id": 0,
          "history_item_ids": [0], "target_timestamp": 0, "user_id": "u", "domain": domain}


ROWS = [_row(["Toy Story", "GoldenEye"], "Four Rooms"),
        _row(["Star Wars", "Fargo", "Contact", "Scream"], "Liar Liar"),
        _row(["Halo 3"], "Zelda", domain="game")]


def test_prompt_template_exact_text():
  row = ROWS[0]
  assert prompts.prompt_for(row) == (
      "Below is an instruction that describes a task, paired with an input that provides further "
      "context. Write a response that appropriately completes the request. \n\n"
      "### Instruction:\nGiven a list of movies the user has watched before, please recommend a "
      "new movie that the user likes to the user.\n\n"
      "### Input:\nThe user has watched the following movies before:\"Toy Story\", \"GoldenEye\"\n "
      "\n\n### Response:\n")
  assert prompts.prompt_for(row).endswith(prompts.RESPONSE_MARKER)
  assert prompts.full_text(row) == prompts.prompt_for(row) + '"Four Rooms"'
  assert prompts.PromptFormat().response_of(prompts.full_text(row)) == '"Four Rooms"'
  assert prompts.unquote(' "Four Rooms" ') == "Four Rooms"
  assert ROWS[2]["instruction"].startswith("Given a list of video games the user has played")


def test_labels_equal_inputs_with_eos(smollm2_tokenizer):
  tok = smollm2_tokenizer
  data = tokenize.tokenize_rows(tok, ROWS)
  for i, row in enumerate(ROWS):
    ids, labels = data.example(i)
    assert ids.dtype == np.int32 and labels.dtype == np.int32
    assert ids.tolist() == tok(prompts.full_text(row))["input_ids"] + [tok.eos_token_id]
    assert labels.tolist() == ids.tolist()


def test_train_on_inputs_false_masks_the_prompt(smollm2_tokenizer):
  tok = smollm2_tokenizer
  data = tokenize.tokenize_rows(tok, ROWS, train_on_inputs=False)
  for i, row in enumerate(ROWS):
    ids, labels = data.example(i)
    prompt_ids = tok(prompts.prompt_for(row))["input_ids"]
    assert ids[:len(prompt_ids)].tolist() == prompt_ids  # the prompt is a token prefix
    assert (labels[:len(prompt_ids)] == IGNORE_INDEX).all()
    kept = labels[len(prompt_ids):]
    assert kept.tolist() == ids[len(prompt_ids):].tolist()
    assert tok.decode(kept[:-1]) == row["output"] and kept[-1] == tok.eos_token_id


def test_cutoff_truncates_and_drops_eos(smollm2_tokenizer):
  tok = smollm2_tokenizer
  full = tok(prompts.full_text(ROWS[0]))["input_ids"]
  ids, _ = tokenize.tokenize_rows(tok, ROWS[:1], cutoff_len=20).example(0)
  assert ids.tolist() == full[:20]  # at the cutoff: no room for EOS
  ids, _ = tokenize.tokenize_rows(tok, ROWS[:1], cutoff_len=len(full) + 1).example(0)
  assert ids.tolist() == full + [tok.eos_token_id]
  # all of a truncated example is prompt: nothing left to learn
  _, labels = tokenize.tokenize_rows(tok, ROWS[:1], cutoff_len=20, train_on_inputs=False).example(0)
  assert (labels == IGNORE_INDEX).all()


def test_shared_prefix_length():
  make = lambda *seqs: tokenize.Tokenized.from_lists(seqs, seqs)
  assert tokenize.shared_prefix_length(make([5, 6, 7, 8], [5, 6, 7, 9, 9], [5, 6, 7, 1])) == 3
  # Every example keeps at least one token after the prefix.
  assert tokenize.shared_prefix_length(make([5, 6, 7, 8], [5, 6, 7])) == 2
  assert tokenize.shared_prefix_length(make([5, 6], [4, 6])) == 0
  assert tokenize.shared_prefix_length(make([5])) == 0
  # Over several datasets (train and valid); empty or missing ones are skipped.
  assert tokenize.shared_prefix_length(make([1, 2, 3, 4]), None, make([1, 2, 9])) == 2
  assert tokenize.shared_prefix_length(make(), None) == 0


def test_real_prompts_share_the_instruction(smollm2_tokenizer):
  """Every movie prompt opens with the same instruction tokens (run once per batch); a mixed
  movie + game set shares less of it."""
  tok = smollm2_tokenizer
  movies = tokenize.tokenize_rows(tok, ROWS[:2], train_on_inputs=False)
  shared = tokenize.shared_prefix_length(movies)
  text = tok.decode(movies.example(0)[0][:shared])
  assert text.startswith("Below is an instruction") and "### Input:" in text
  assert text.endswith('watched the following movies before:"')
  mixed = tokenize.shared_prefix_length(tokenize.tokenize_rows(tok, ROWS))
  assert 0 < mixed < shared
  assert "### Instruction:" in tok.decode(movies.example(0)[0][:mixed])


def test_generation_prompts_left_padded(smollm2_tokenizer):
  tok = smollm2_tokenizer
  data = tokenize.tokenize_prompts(tok, ROWS)
  lengths = data.lengths
  batch = tokenize.pad_examples(data, range(3), int(lengths.max()), side="left")
  marker = tok(prompts.RESPONSE_MARKER)["input_ids"]
  for i in range(3):
    assert batch["input_ids"][i, -len(marker):].tolist() == marker
    pad = lengths.max() - lengths[i]
    assert (batch["input_ids"][i, :pad] == 0).all() and (batch["attention_mask"][i, :pad] == 0).all()
    assert (batch["attention_mask"][i, pad:] == 1).all()
  pos = tokenize.position_ids(batch["attention_mask"])
  assert pos[np.argmin(lengths), -1] == lengths.min() - 1 and pos[:, 0].max() == 0


def _toy_data(char_tokenizer, n=37):
  rng = np.random.default_rng(0)
  rows = [_row(["T" * int(rng.integers(1, 60))] * int(rng.integers(1, 6)), f"Item {i}")
          for i in range(n)]
  return tokenize.tokenize_rows(char_tokenizer, rows, cutoff_len=512)


def test_bucket_length():
  assert [batching.bucket_length(n) for n in (1, 63, 64, 65, 512)] == [64, 64, 64, 128, 512]
  assert batching.bucket_length(9, 8) == 16


def test_group_by_length_buckets_to_few_static_shapes(char_tokenizer):
  data = _toy_data(char_tokenizer, 200)
  grouped = batching.Batches(data, 8, seed=1, group_by_length=True, megabatch_factor=5)
  plain = batching.Batches(data, 8, seed=1)
  padded = {}
  for name, b in (("grouped", grouped), ("plain", plain)):
    batches = list(b.epoch(0))
    shapes = {x["input_ids"].shape for x in batches}
    assert all(t % 64 == 0 and bsz == 8 for bsz, t in shapes)
    padded[name] = sum(int((x["attention_mask"] == 0).sum()) for x in batches)
    rows = np.concatenate([b.global_indices(s) for s in range(b.steps_per_epoch)])
    assert len(rows) == len(set(rows.tolist())) == 200  # each example exactly once per epoch
    for x in batches:
      assert x["input_ids"].dtype == np.int32 and x["labels"].dtype == np.int32
      assert ((x["input_ids"] == 0) == (x["attention_mask"] == 0)).all()
      assert (x["labels"][x["attention_mask"] == 0] == IGNORE_INDEX).all()
  assert padded["grouped"] < padded["plain"]
  # within a megabatch, batches hold similar lengths
  lengths = data.lengths
  spread = [np.ptp(lengths[grouped.global_indices(s)]) for s in range(grouped.steps_per_epoch)]
  assert np.mean(spread) < np.ptp(lengths) / 2


def test_deterministic_and_resumable(char_tokenizer):
  data = _toy_data(char_tokenizer)
  make = lambda seed: batching.Batches(data, 4, seed=seed, group_by_length=True, megabatch_factor=2)
  a, b = make(3), make(3)
  assert a.steps_per_epoch == 9  # 37 // 4, the remainder is dropped
  full = list(a.iterate(0, 25))  # crosses two epoch boundaries
  resumed = list(b.iterate(13, 12))
  for x, y in zip(full[13:], resumed):
    assert all(np.array_equal(x[k], y[k]) for k in ("input_ids", "attention_mask", "labels"))
  other = make(4)
  assert not np.array_equal(a.global_indices(0), other.global_indices(0))
  assert not np.array_equal(a.global_indices(0), a.global_indices(9))  # new order each epoch


def test_two_processes_build_disjoint_halves_of_the_global_batch(char_tokenizer):
  data = _toy_data(char_tokenizer)
  kw = dict(seed=5, group_by_length=True, megabatch_factor=2, with_position_ids=True)
  whole = batching.Batches(data, 8, process_index=0, process_count=1, **kw)
  parts = [batching.Batches(data, 8, process_index=i, process_count=2, **kw) for i in range(2)]
  assert [p.share for p in parts] == [(0, 4), (4, 8)]
  for step in range(6):
    locals_ = [p.local_batch(step) for p in parts]
    assert locals_[0]["input_ids"].shape == locals_[1]["input_ids"].shape == (
        4, whole.local_batch(step)["input_ids"].shape[1])
    for k, v in whole.local_batch(step).items():
      assert np.array_equal(np.concatenate([l[k] for l in locals_]), v), k
  with pytest.raises(UserError, match="does not divide"):
    batching.Batches(data, 7, process_index=0, process_count=2)


def test_global_batch_from_local_on_one_process(char_tokenizer):
  from bigrec_jax import parallel

  data = _toy_data(char_tokenizer)
  mesh = parallel.make_mesh()
  batches = batching.Batches(data, 4, seed=0)
  first = next(batching.device_batches(batches.iterate(0, 1), mesh))
  assert first["input_ids"].shape == batches.local_batch(0)["input_ids"].shape
  assert np.array_equal(np.asarray(first["labels"]), batches.local_batch(0)["labels"])


def test_eval_batches_keep_every_row_with_masked_fillers(char_tokenizer):
  data = _toy_data(char_tokenizer, 10)
  b = batching.Batches(data, 4, shuffle=False, drop_remainder=False, padding_side="right")
  assert b.steps_per_epoch == 3
  assert b.global_indices(2).tolist() == [8, 9, -1, -1]
  last = b.local_batch(2)
  assert (last["labels"][2:] == IGNORE_INDEX).all() and last["attention_mask"][2:].any()
  assert last["attention_mask"][0, 0] == 1  # right padding: tokens first
  assert np.array_equal(b.local_batch(0)["labels"][0, :data.lengths[0]], data.example(0)[1])


def test_chatml_template_is_smollm2s_own_chat_template():
  """The chatml prompt is the embedded GGUF's `tokenizer.chat_template` rendered by jinja2 for one
  user turn (instruction + input) with the generation prompt; the answer ends with its EOS."""
  import gguf
  import jinja2

  from bigrec_jax import assets

  reader = gguf.GGUFReader(assets.smollm2_gguf())
  field = reader.fields["tokenizer.chat_template"]
  template = jinja2.Environment().from_string(bytes(field.parts[field.data[0]]).decode())
  for row in ROWS:
    user = f"{row['instruction']}\n{row['input'].rstrip()}"
    expected = template.render(messages=[{"role": "user", "content": user}],
                               add_generation_prompt=True)
    assert prompts.prompt_for(row, "chatml") == expected
    assert prompts.full_text(row, "chatml") == expected + row["output"]
    assert prompts.PromptFormat("chatml").response_of(expected + row["output"]) == row["output"]
  with pytest.raises(ValueError, match="unknown prompt template"):
    prompts.prompt_for(ROWS[0], "vicuna")


def test_chatml_response_only_labels_are_the_title_and_im_end(smollm2_tokenizer):
  tok = smollm2_tokenizer
  data = tokenize.tokenize_rows(tok, ROWS, train_on_inputs=False, template="chatml")
  prompts_ids = tokenize.tokenize_prompts(tok, ROWS, template="chatml")
  for i, row in enumerate(ROWS):
    ids, labels = data.example(i)
    prompt_ids, _ = prompts_ids.example(i)
    n = len(prompt_ids)
    assert ids[:n].tolist() == prompt_ids.tolist()
    assert (labels[:n] == IGNORE_INDEX).all()
    assert tok.decode(labels[n:-1]) == row["output"]
    assert tok.convert_ids_to_tokens(int(labels[-1])) == "<|im_end|>"
    # the decoded prompt + answer splits where generation's decode splits it
    text = tok.decode(ids, skip_special_tokens=True)
    assert text.split(prompts.PromptFormat("chatml").decoded_split)[-1] == row["output"]


def test_a_new_prompt_format_on_old_prepared_data(tmp_path, toy_dat, smollm2_tokenizer):
  """A prepared directory is tokenized under any format without re-preparing: training renders
  each row from its item ids and the catalog (alpaca: byte-identical to the stored text)."""
  from bigrec_jax.data import prepare, prepared
  from bigrec_jax.train import loop
  from configs import tiny

  tok, out = smollm2_tokenizer, str(tmp_path / "toy")
  prepare.prepare("ml-1m", out, *toy_dat, prepare.PrepareOptions(
      history_len=2, min_history=2, keep_last_of_short_users=True, target_rating_above="none"))
  rows, titles = prepared.load_training_set([out], -1, 0)
  stored = tokenize.tokenize_rows(tok, rows)  # the text prepare wrote (alpaca)
  assert np.array_equal(tokenize.tokenize_rows(tok, rows, titles=titles).ids, stored.ids)
  stale = [{**r, "instruction": "old wording", "input": "old history"} for r in rows]
  chatml = prompts.PromptFormat("chatml")
  assert np.array_equal(tokenize.tokenize_rows(tok, stale, template=chatml, titles=titles).ids,
                        tokenize.tokenize_rows(tok, rows, template=chatml).ids)
  config = tiny.get_config()
  config.data.dir, config.data.sample, config.data.valid_split = out, -1, "valid"
  config.data.prompt_template = "chatml"  # the training stage's path: ids + catalog
  train, valid = loop._load_data(config, tok)  # pylint: disable=protected-access
  assert len(train) == len(rows) and len(valid) == len(prepared.load_prepared(out).rows("valid"))
  for i, row in enumerate(rows):
    text = tok.decode(train.example(i)[0])
    assert text == chatml.full_text(row) + "<|im_end|>" and text.startswith("<|im_start|>system")
    history = ", ".join(prompts.quote(titles[i][j]) for j in row["history_item_ids"])
    assert history in text and chatml.parse(chatml.response_of(text)[:-10]) == \
        titles[i][row["target_item_id"]]
