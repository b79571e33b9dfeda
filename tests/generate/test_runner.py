"""The runner and launcher: input checks, bucketing, the output file, adapters, --help."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from bigrec_jax.files import UserError
from bigrec_jax.generate import GenerateOptions, Generator, beam_search, runner
from common_fixtures import save_tiny_hf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _row(history="The user has watched the following movies before:\"Toy Story\"\n "):
  return {"instruction": "Given a list of movies the user has watched before, please recommend "
                         "a new movie that the user likes to the user.", "input": history}


@pytest.mark.parametrize("bad,message", [
    ({"input": "x"}, "row 2: missing 'instruction'"),
    ({"instruction": "i"}, "row 2: missing 'input'"),
    ({"instruction": "i", "input": 3}, "row 2: 'input' must be a string"),
    ({"instruction": "  ", "input": "x"}, "row 2: empty prompt"),
    ({"instruction": "i", "input": ""}, "row 2: empty prompt"),
    ("text", "row 2: expected an object"),
])
def test_bad_rows_are_user_errors_naming_the_row(smollm2, bad, message):
  generator = Generator(smollm2, GenerateOptions(progress=False))
  with pytest.raises(UserError, match=message):
    generator.prompt_ids([_row(), _row(), bad], "test.json")


def test_too_long_prompts_fail_or_are_truncated_from_the_left(smollm2, caplog):
  long_row = _row("The user has watched the following movies before:" +
                  ", ".join(f'"Movie {i}"' for i in range(40)) + "\n ")
  strict = Generator(smollm2, GenerateOptions(max_prompt_len=120, progress=False))
  with pytest.raises(UserError, match=r"test.json: row 1: the prompt has \d+ tokens, more than "
                                      r"the 120 allowed"):
    strict.prompt_ids([_row(), long_row], "test.json")
  lenient = Generator(smollm2, GenerateOptions(max_prompt_len=120, truncate_long_prompts=True,
                                               progress=False))
  with caplog.at_level(logging.WARNING):
    ids = lenient.prompt_ids([_row(), long_row], "test.json")
  assert len(ids[1]) == 120 and "row 1" in caplog.text
  full = smollm2.tokenizer(runner.prompts_lib.prompt_for(long_row))["input_ids"]
  assert list(ids[1]) == full[-120:]  # the response marker at the end is kept


def test_prompts_of_prepared_rows_render_from_ids_in_the_options_format(smollm2, ml100k,
                                                                        real_rows):
  """With the catalog, prompts come from history_item_ids (alpaca: the stored text's ids), so a
  chatml model generates on a directory prepared before chatml existed; bad ids are named."""
  from bigrec_jax.data import prompts

  titles = ml100k.log.titles
  alpaca = Generator(smollm2, GenerateOptions(progress=False))
  assert all(np.array_equal(a, b) for a, b in zip(alpaca.prompt_ids(real_rows, titles=titles),
                                                  alpaca.prompt_ids(real_rows)))
  fmt = prompts.PromptFormat("chatml")
  chatml = Generator(smollm2, GenerateOptions(progress=False, prompt_format=fmt))
  stale = [{**r, "input": "stale text"} for r in real_rows[:2]]
  for row, ids in zip(real_rows, chatml.prompt_ids(stale, titles=titles)):
    assert list(ids) == smollm2.tokenizer(fmt.prompt(row))["input_ids"]
  with pytest.raises(UserError, match="row 0: history_item_ids"):
    chatml.prompt_ids([{**real_rows[0], "history_item_ids": [len(titles)]}], titles=titles)


def test_plan_buckets_pads_batches_and_keeps_every_row(smollm2):
  generator = Generator(smollm2, GenerateOptions(batch_size=3, bucket_multiple=32,
                                                 progress=False))
  lengths = [40, 70, 33, 64, 65, 10, 100]
  plan = generator.plan(lengths)
  assert [length for length, _ in plan] == [32, 64, 96, 128]
  seen = sorted(int(i) for _, idx in plan for i in idx if i >= 0)
  assert seen == list(range(len(lengths)))
  for length, idx in plan:
    assert len(idx) == 3 and all(lengths[i] <= length for i in idx if i >= 0)


def _tiny_model_dir(tmp_path):
  """A tiny random Llama with the SmolLM2 tokenizer, saved as an HF directory (fast to run)."""
  path = tmp_path / "tiny"
  save_tiny_hf(path, vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
               num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
               tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
  return str(path)


def test_run_writes_rows_with_predictions_and_compiles_once_per_bucket(tmp_path):
  from bigrec_jax.model import LoraConfig, lora, load_model

  model_dir = _tiny_model_dir(tmp_path)
  rows = [dict(_row(), user_id=str(i)) for i in range(6)]
  rows[0] = _row("The user has watched the following movies before:" +
                 ", ".join(f'"Movie {i}"' for i in range(30)) + "\n ")  # a second bucket
  (tmp_path / "in.json").write_text(json.dumps(rows))
  (tmp_path / "data").mkdir()
  (tmp_path / "data" / "items.tsv").write_text("0\tToy Story\n1\tHeat\n2\tCasino\n")
  # A training workdir with a (random, non-zero) PEFT adapter in adapter/.
  base = load_model(model_dir)
  lc = LoraConfig(rank=2, alpha=4.0)
  import jax
  adapter = lora.init_lora(base.config, lc, jax.random.key(1))
  adapter = jax.tree.map(lambda x: x + 0.1, adapter)
  lora.export_peft(str(tmp_path / "work" / "adapter"), adapter, lc, base.config)

  before = beam_search.TRACE_COUNTS["search"]
  options = GenerateOptions(num_beams=2, num_return_sequences=2, max_new_tokens=6, batch_size=2,
                            constrained=True, progress=False)
  outputs = {}
  for name, adapter_path in (("base", None), ("tuned", str(tmp_path / "work"))):
    summary = runner.run(str(tmp_path / "in.json"), str(tmp_path / f"{name}.json"), options,
                         model_path=model_dir, adapter=adapter_path,
                         items=str(tmp_path / "data" / "items.tsv"))
    assert summary["best_is_catalog_title"] == 1.0
    outputs[name] = json.loads((tmp_path / f"{name}.json").read_text())
  for out in outputs.values():
    assert [r.get("user_id") for r in out] == [r.get("user_id") for r in rows]
    for row in out:
      assert len(row["predict"]) == 2 and len(row["predict_scores"]) == 2
      assert all(p in ('"Toy Story"', '"Heat"', '"Casino"') for p in row["predict"])
  # The adapter (found in the workdir's adapter/) was merged: the scores move.
  assert not np.allclose([r["predict_scores"] for r in outputs["base"]],
                         [r["predict_scores"] for r in outputs["tuned"]])
  # 6 rows in 2 buckets, batches of 2 (with fillers), two runs: 8 batches, 2 programs.
  assert beam_search.TRACE_COUNTS["search"] - before == 2


def test_adapter_path_must_hold_a_peft_adapter(tmp_path):
  with pytest.raises(UserError, match="not a PEFT adapter"):
    runner.resolve_adapter(str(tmp_path))


def test_launcher_help_and_bad_input_exit_cleanly(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  script = os.path.join(ROOT, "launch", "generate.py")
  res = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=120)
  # absl prints the usage and exits with status 1 after --help (its convention), before main.
  assert res.returncode in (0, 1) and "Traceback" not in res.stderr
  assert "--num_beams" in res.stdout and "--constrained" in res.stdout
  (tmp_path / "in.json").write_text(json.dumps([_row(), {"instruction": "x"}]))
  res = subprocess.run([sys.executable, script, f"--input={tmp_path / 'in.json'}",
                        f"--output={tmp_path / 'out.json'}"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=300)
  assert res.returncode == 2, res.stderr[-2000:]
  # messages wrap at 100 columns (where depends on the temporary path's length)
  assert "row 1: missing 'input'" in " ".join(res.stderr.split())
  assert "Traceback" not in res.stderr


@pytest.mark.parametrize("flags,message", [
    (["--renormalize"], "need constrained decoding"),
    (["--constrained", "--assistant=sasrec"], "needs --assistant_scores"),
    (["--constrained", "--assistant=mostpop", "--guidance=2"],
     "alpha 2 is not in [0, 1] for assistant=mostpop"),
])
def test_launcher_catalog_aware_flags_are_checked_before_the_model_loads(tmp_path, flags,
                                                                         message):

  env = dict(os.environ, JAX_PLATFORMS="cpu")
  items = tmp_path / "items.tsv"
  items.write_text("0\tToy Story\n1\tHeat\n")
  (tmp_path / "in.json").write_text(json.dumps([_row()]))
  res = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "generate.py"),
                        f"--input={tmp_path / 'in.json'}", f"--output={tmp_path / 'out.json'}",
                        f"--items={items}", *flags], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)
  assert res.returncode == 2, res.stderr[-2000:]
  assert message in res.stderr and "Traceback" not in res.stderr


def test_exclusion_leaves_out_every_id_of_a_watched_title():
  """The search writes titles: excluding one id of a title shared by two (ML-100K lists Fly Away
  Home as 303 and 499) must take the other out too, or the watched title comes back."""
  from bigrec_jax.generate.runner import same_title_ids

  titles = ["Fly Away Home", "Heat", "Fly Away Home", "Tombstone"]
  assert same_title_ids([[0], [1, 3], [], [2]], titles) == [[0, 2], [1, 3], [], [0, 2]]
