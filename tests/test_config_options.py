"""Every stage knob is a config field: options are built from the config tree, overrides reach them."""
from __future__ import annotations

import dataclasses
import sys

import pytest
from absl import flags
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from bigrec_jax import config as config_lib
from bigrec_jax import parallel
from bigrec_jax import pipeline as pl
from bigrec_jax.evaluate import run as evaluate_run
from bigrec_jax.generate import runner

# Fields a stage gives itself (paths of the workdir, other sections) or that only show progress.
_GIVEN = {"generate": {"progress", "prompt_format"},  # data.prompt_template
          "ground": {"data_dir", "valid_predictions", "test_predictions", "out_dir", "model",
                     "tokenizer", "cf_names", "cf_valid_scores", "cf_test_scores", "beam",
                     "mesh_shape", "dtype", "kernels", "progress"},  # model.*, mesh.shape
          # config.prepare_options maps the first five; the last two are prepare_data.py's own.
          "data": {"eval_sample_size", "valid_sample_size", "eval_sample_seed", "few_shot_sample",
                   "few_shot_seed", "keep_last_of_short_users", "build_tfds"}}


def _config(*overrides):
  """configs/tiny.py with command-line overrides, parsed as launch/pipeline.py parses them."""
  argv, sys.argv = sys.argv, ["pipeline.py", *overrides]  # overrides are found when defined
  try:
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", "configs/tiny.py", flag_values=values)
    values(sys.argv)
  finally:
    sys.argv = argv
  return values.config


def test_every_options_field_is_a_config_field():
  c = _config()
  from bigrec_jax.data.prepare import PrepareOptions

  for cls, section in ((runner.GenerateOptions, "generate"),
                       (evaluate_run.EvaluateOptions, "ground"), (PrepareOptions, "data")):
    missing = {f.name for f in dataclasses.fields(cls)} - set(c[section]) - _GIVEN[section]
    assert not missing, (cls.__name__, missing)


def test_a_grid_set_on_the_command_line_reaches_the_evaluation(monkeypatch, tmp_path):
  seen = {}

  def fake_evaluate(opts, log):
    seen["opts"] = opts
    return {"methods": {}}

  monkeypatch.setattr(evaluate_run, "evaluate_predictions", fake_evaluate)
  c = _config("--config.ground.pop_gammas=(0.0,2.5)", "--config.ground.both=false",
              "--config.ground.query_batch=7")
  pl.evaluate_stage(c, pl.Paths(str(tmp_path)), log=lambda m: None)
  opts = seen["opts"]
  assert tuple(opts.pop_gammas) == (0.0, 2.5) and not opts.both and opts.query_batch == 7
  # The grid not set here is configs/tiny.py's.
  assert tuple(opts.cf_gammas) == (0.0, 0.1, 1.0, 10.0)
  assert opts.embedding_cache is None  # "" -> None
  assert opts.embed_batch_size == c.ground.embed_batch_size and opts.gamma_batch == 4
  # The default (and demo) grids are the reference's, unchanged.
  from configs import default, demo
  for tree in (default.get_config(), demo.get_config()):
    assert tree.ground.pop_gammas == tuple(float(g) for g in range(100))
    assert len(tree.ground.cf_gammas) == 199


def test_generate_options_come_from_the_config(monkeypatch, tmp_path):
  seen = {}

  def fake_run_files(jobs, options, **kw):
    seen["options"] = options
    return [{}, {}]

  monkeypatch.setattr(runner, "run_files", fake_run_files)
  c = _config("--config.generate.early_stopping=true", "--config.generate.bucket_multiple=16")
  pl.generate_stage(c, pl.Paths(str(tmp_path)))
  o = seen["options"]
  assert o.early_stopping and o.bucket_multiple == 16
  assert (o.num_beams, o.max_new_tokens, o.share_prompt_prefix) == (
      c.generate.num_beams, c.generate.max_new_tokens, c.generate.share_prompt_prefix)


def test_mesh_rules_are_config_fields():
  c = _config('--config.mesh.rules.embed=', "--config.mesh.rules.mlp=fsdp,tensor")
  with parallel.logical_rules(c.mesh.rules):
    assert parallel.logical_to_spec(("embed", "mlp")) == P(None, ("fsdp", "tensor"))
  assert parallel.logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")  # outside: defaults
  # Only names some array uses are rules.
  assert set(c.mesh.rules) == {"batch", "layers", "vocab", "embed", "q_proj", "kv_proj", "mlp",
                               "lora_rank", "items"}


def test_options_maps_empty_config_values_to_none():
  @dataclasses.dataclass
  class Opts:
    a: int = 1
    b: int | None = None
    c: tuple = ()

  got = config_lib.options(Opts, {"a": 3, "b": 0, "c": [1, 2], "other": 5})
  assert got == Opts(a=3, b=None, c=(1, 2))
  assert config_lib.options(Opts, {"a": 3}, a=4).a == 4


@pytest.mark.parametrize("overrides, needle", [
    (("--config.lora.targets=('q_proj','qkv')",), "--config.lora: unknown LoRA target(s) ['qkv']"),
    (("--config.ground.pop_gammas=(1.0,-2.0)",), "--config.ground.pop_gammas=[1.0, -2.0]"),
    (("--config.mesh.rules.embed=fsdp,model",), "--config.mesh.rules.embed='fsdp,model'"),
    (("--config.train.batch_size=5",), "not a multiple of --config.train.micro_batch_size"),
    (("--config.generate.bucket_multiple=0",), "--config.generate.bucket_multiple=0: must be"),
])
def test_one_checker_fails_the_same_way_for_every_entry_point(overrides, needle):
  """The pipeline and the train launcher run the same checker on the same tree."""
  from bigrec_jax.files import UserError
  from bigrec_jax.train import loop

  c = _config(*overrides)
  messages = []
  for check in (pl.check_config, config_lib.check,
                lambda c: loop.train(c, "/nonexistent/workdir")):  # checks before any work
    with pytest.raises(UserError) as e:
      check(c)
    messages.append(str(e.value))
  assert needle in messages[0] and len(set(messages)) == 1, messages


def test_lora_targets_are_names_all_linear_or_a_regex():
  from bigrec_jax.model.config import LORA_TARGETS, PROJECTIONS
  from bigrec_jax.train import loop

  assert LORA_TARGETS == tuple(PROJECTIONS) and PROJECTIONS["down_proj"] == "mlp.down_proj"
  for override, want in (("--config.lora.targets=all-linear", LORA_TARGETS),
                         ("--config.lora.targets=(q|v)_proj", ("q_proj", "v_proj")),
                         ("--config.lora.targets=('v_proj','q_proj')", ("q_proj", "v_proj")),
                         ("--config.lora.targets=.*_proj", LORA_TARGETS)):
    c = _config(override)
    config_lib.check(c)
    assert loop.lora_config_of(c).targets == want, override
    assert loop.made_with(c)["lora.targets"] == want


def test_no_code_restates_a_config_default():
  """Defaults live in configs/default.py: no `config.<section>.get(field, default)` in the code."""
  import glob
  import os
  import re

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  pattern = re.compile(r"\bconfig\.(?:model|lora|data|train|mesh|generate|ground|pipeline)"
                       r"\.get\(")
  hits = [f"{path}:{i}" for path in glob.glob(os.path.join(root, "bigrec_jax", "**", "*.py"),
                                              recursive=True)
          for i, line in enumerate(open(path), 1) if pattern.search(line)]
  assert not hits, hits
