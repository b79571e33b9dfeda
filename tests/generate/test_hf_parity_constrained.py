"""Short version of `launch/parity.py --tasks=generate`: our constrained beam search with the
demo's options (4 beams, 4 returned, closing-quote stop, max_new_tokens 24) returns the beams of
transformers + peft `generate(prefix_allowed_tokens_fn=...)` over the same catalog trie.

A small random LoRA (exported to PEFT, merged on our side, loaded by peft on the other) on the
real SmolLM2, two real ML-100K test rows, the whole 1682-title catalog; then the same rows with
history exclusion, each row's history holding the title both sides chose first, so the
reference must walk its per-row trie to agree. The long version (the demo's trained adapter,
50 rows, the demo's `all_past` exclusion) is in README, "Parity with the PyTorch reference".
"""
from __future__ import annotations

import dataclasses

import jax

from bigrec_jax.bench import parity
from bigrec_jax.data import prompts
from bigrec_jax.model import LoraConfig, lora as lora_lib
from configs import demo


def test_constrained_beams_equal_hf_generate_over_the_trie(smollm2, ml100k, tmp_path):
  config = parity.parity_config(demo.get_config())
  assert config.generate.exclude_history == "all_past"  # parity keeps the demo's exclusion
  with config.unlocked():
    config.generate.batch_size = 2
    config.generate.exclude_history = "none"
  g = config.generate
  assert g.constrained and g.stop_at_closing_quote and g.num_beams == g.num_return_sequences == 4
  lc = LoraConfig(rank=8, alpha=16, dropout=0.0, targets=("q_proj", "v_proj"))
  lora = lora_lib.init_lora(smollm2.config, lc, jax.random.key(0))
  lora = jax.tree.map(lambda x: x + 0.01 * jax.random.normal(jax.random.key(1), x.shape), lora)
  adapter = str(tmp_path / "adapter")
  lora_lib.export_peft(adapter, jax.device_get(lora), lc, smollm2.config)
  merged = dataclasses.replace(smollm2, params=lora_lib.merge(smollm2.params, lora, lc))
  rows = ml100k.rows["test"][:2]
  out = parity.generate_parity(config, rows, ml100k.log.titles, str(tmp_path / "work"),
                               adapter=adapter, model=merged)

  assert out["options"]["trie_titles"] == len(ml100k.log.titles) == 1682
  assert out["best_equal"] == 2, out["mismatches"]
  assert out["all_beams_equal"] == 2, out["mismatches"]
  assert out["matched_beams"] == 8
  assert out["matched_score_max_abs_diff"] < 1e-3
  for example in out["examples"]:  # every best beam is a quoted catalog title
    assert example["best"][0].startswith('"') and example["best"][0].endswith('"')

  # History exclusion: put each row's best title (any id of it) in its history, so that both
  # sides must leave it out; the prompt text stays the same.
  with config.unlocked():
    config.generate.exclude_history = "shown"
  titles = [prompts.unquote(t) for t in ml100k.log.titles]
  excluded_rows, first_best = [], []
  for row, example in zip(rows, out["examples"]):
    best = prompts.unquote(example["best"][0])
    first_best.append(best)
    excluded_rows.append(dict(row, history_item_ids=list(row["history_item_ids"])
                              + [titles.index(best)]))
  again = parity.generate_parity(config, excluded_rows, ml100k.log.titles,
                                 str(tmp_path / "work_excluded"), adapter=adapter, model=merged)
  assert again["options"]["exclude_history"] == "shown"
  assert min(again["excluded_titles_per_row"]) >= 1
  assert again["best_equal"] == 2, again["mismatches"]
  assert again["all_beams_equal"] == 2, again["mismatches"]
  assert again["matched_score_max_abs_diff"] < 1e-3
  for example, best in zip(again["examples"], first_best):
    assert prompts.unquote(example["best"][0]) != best
