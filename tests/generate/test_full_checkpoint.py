"""Generation accepts a full fine-tuning output (train.mode=full) wherever it accepts an adapter:
the HF model directory itself or the training workdir holding it in model/."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from bigrec_jax.files import UserError, write_json
from bigrec_jax.generate import GenerateOptions, runner
from bigrec_jax.model import export, load_model
from test_runner import _row, _tiny_model_dir


def test_full_model_directory_and_workdir_replace_the_base_model(tmp_path):
  base_dir = _tiny_model_dir(tmp_path)
  base = load_model(base_dir)
  # A training workdir as a train.mode=full run leaves it: model/ + train_summary.json.
  tuned = jax.tree.map(lambda x: x + 0.2 * jax.random.normal(jax.random.key(3), x.shape),
                       base.params)
  work = tmp_path / "work"
  export.save_pretrained(str(work / "model"), tuned, base.config, base.tokenizer)
  write_json(str(work / "train_summary.json"), {"mode": "full", "model": str(work / "model")})

  assert runner.resolve_trained(str(work)) == ("full", str(work / "model"))
  assert runner.resolve_trained(str(work / "model")) == ("full", str(work / "model"))
  with pytest.raises(UserError, match="not a LoRA adapter"):
    runner.resolve_adapter(str(work))
  loaded = runner.load_merged_model(base_dir, str(work))  # the tuned weights, not the base's
  for a, b in zip(jax.tree.leaves(tuned), jax.tree.leaves(loaded.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  (tmp_path / "in.json").write_text(json.dumps([_row(), _row()]))
  options = GenerateOptions(num_beams=2, num_return_sequences=2, max_new_tokens=4, batch_size=2,
                            progress=False)
  scores = {}
  for name, adapter in (("base", None), ("workdir", str(work)), ("dir", str(work / "model"))):
    runner.run(str(tmp_path / "in.json"), str(tmp_path / f"{name}.json"), options,
               model_path=base_dir, adapter=adapter)
    scores[name] = [r["predict_scores"] for r in json.loads((tmp_path / f"{name}.json").read_text())]
  assert scores["workdir"] == scores["dir"]
  assert not np.allclose(scores["base"], scores["workdir"])
