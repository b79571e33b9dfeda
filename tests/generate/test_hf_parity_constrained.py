"""Short version of `launch/parity.py --tasks=generate`: our constrained beam search with the
demo's options (4 beams, 4 returned, closing-quote stop, max_new_tokens 24) returns the beams of
transformers + peft `generate(prefix_allowed_tokens_fn=...)` over the same catalog trie.

A small random LoRA (exported to PEFT, merged on our side, loaded by peft on the other) on the
real SmolLM2, two real ML-100K test rows, the whole 1682-title catalog, with history exclusion:
each row's history holds the title our search chose first without it, so the reference must
walk its per-row trie to agree. The long version (the demo's trained adapter,
50 rows, the demo's `all_past` exclusion) is in README, "Parity with the PyTorch reference".
"""
from __future__ import annotations

import dataclasses

import jax

from bigrec_jax.bench import parity
from bigrec_jax.data import prompts
from bigrec_jax.generate import runner
from bigrec_jax.model import LoraConfig, lora as lora_lib
from configs import demo


def test_constrained_beams_equal_hf_generate_over_the_trie(smollm2, ml100k, tmp_path):
  config = parity.parity_config(demo.get_config())
  assert config.generate.exclude_history == "all_past"  # parity keeps the demo's exclusion
  with config.unlocked():
    config.generate.batch_size = 2
    config.generate.exclude_history = "shown"
  g = config.generate
  assert g.constrained and g.stop_at_closing_quote and g.num_beams == g.num_return_sequences == 4
  lc = LoraConfig(rank=8, alpha=16, dropout=0.0, targets=("q_proj", "v_proj"))
  lora = lora_lib.init_lora(smollm2.config, lc, jax.random.key(0))
  lora = jax.tree.map(lambda x: x + 0.01 * jax.random.normal(jax.random.key(1), x.shape), lora)
  adapter = str(tmp_path / "adapter")
  lora_lib.export_peft(adapter, jax.device_get(lora), lc, smollm2.config)
  merged = dataclasses.replace(smollm2, params=lora_lib.merge(smollm2.params, lora, lc))
  rows = ml100k.rows["test"][:2]

  # Our search alone first, without exclusion: each row's best title then goes into its history
  # (the prompt text stays the same), so the exclusion bites and the reference must walk a
  # per-row trie to return our beams.
  titles = [prompts.unquote(t) for t in ml100k.log.titles]
  plain = runner.Generator(merged, runner.GenerateOptions(
      num_beams=g.num_beams, num_return_sequences=g.num_return_sequences,
      max_new_tokens=g.max_new_tokens, batch_size=g.batch_size, constrained=True,
      stop_at_closing_quote=True, progress=False, prompt_format=prompts.format_of(config.data)),
      titles=ml100k.log.titles)
  first_best = []
  for tokens, _, lengths in plain.generate_ids(plain.prompt_ids(rows)):
    text = merged.tokenizer.decode(list(tokens[0][:lengths[0]]), skip_special_tokens=True)
    first_best.append(prompts.unquote(text))
  rows = [dict(row, history_item_ids=list(row["history_item_ids"]) + [titles.index(best)])
          for row, best in zip(rows, first_best)]

  out = parity.generate_parity(config, rows, ml100k.log.titles, str(tmp_path / "work"),
                               adapter=adapter, model=merged)
  assert out["options"]["trie_titles"] == len(ml100k.log.titles) == 1682
  assert out["options"]["exclude_history"] == "shown"
  assert min(out["excluded_titles_per_row"]) >= 1
  assert out["best_equal"] == 2, out["mismatches"]
  assert out["all_beams_equal"] == 2, out["mismatches"]
  assert out["matched_beams"] == 8
  assert out["matched_score_max_abs_diff"] < 1e-3
  for example, best in zip(out["examples"], first_best):  # a catalog title, not the excluded one
    assert example["best"][0].startswith('"') and example["best"][0].endswith('"')
    assert prompts.unquote(example["best"][0]) != best
