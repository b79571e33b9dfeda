"""Every config file loads, keeps the reference defaults, and presets apply."""
from __future__ import annotations

import importlib

import pytest

from bigrec_jax import pipeline
from bigrec_jax.files import UserError


@pytest.mark.parametrize("name", ["default", "demo", "demo_reference", "tiny", "movie_llama7b", "game_llama7b",
                                  "multi_domain", "baselines"])
def test_config_loads(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.to_dict()


def test_default_is_the_reference_recipe():
  c = importlib.import_module("configs.default").get_config()
  assert (c.lora.rank, c.lora.alpha, c.lora.dropout, tuple(c.lora.targets)) == (
      8, 16.0, 0.05, ("q_proj", "v_proj"))
  assert (c.train.learning_rate, c.train.warmup_steps, c.train.batch_size,
          c.train.micro_batch_size, c.train.num_epochs, c.train.early_stopping_patience) == (
              1e-4, 20, 128, 4, 50, 5)
  assert c.data.train_on_inputs and c.data.cutoff_len == 512 and c.data.sample == 1024
  assert (c.generate.num_beams, c.generate.num_return_sequences, c.generate.max_new_tokens,
          c.generate.constrained) == (4, 4, 128, False)
  pipeline.check_config(c)


def test_demo_reference_differs_from_demo_only_in_the_recipe():
  """Same data, rows, training budget and learning rate; the reference's loss and generation."""
  demo = importlib.import_module("configs.demo").get_config()
  ref = importlib.import_module("configs.demo_reference").get_config()
  for section in ("data", "train", "generate"):
    for field in demo[section]:
      if field in ("train_on_inputs", "warmup_steps", "max_new_tokens",
                   "constrained", "stop_at_closing_quote", "prompt_template", "exclude_history"):
        continue
      assert ref[section][field] == demo[section][field], (section, field)
  reference = importlib.import_module("configs.default").get_config()
  assert ref.data.train_on_inputs and ref.train.learning_rate == reference.train.learning_rate
  assert not ref.generate.constrained and ref.generate.max_new_tokens == 32
  assert ref.data.prompt_template == "alpaca" and ref.generate.exclude_history == "none"


@pytest.mark.parametrize("preset", sorted(importlib.import_module("configs.presets").PRESETS))
def test_presets_apply_and_paper_paths_are_checked(preset):
  c = importlib.import_module("configs.movie_llama7b").get_config(preset)
  assert len(c.mesh.shape) == 3 and c.seeds == (0, 1, 2)
  with pytest.raises(UserError, match="llama-7b-hf"):  # not on this machine: a clear message
    pipeline.check_config(c)


def test_dros_is_an_assistant_once_it_is_trained():
  c = importlib.import_module("configs.demo").get_config()
  c.generate.assistant = "dros"
  with pytest.raises(UserError, match="assistant=dros is not trained"):
    pipeline.check_config(c)
  c.baselines.models = ("sasrec", "dros", "mostpop")
  pipeline.check_config(c)


def test_only_the_model_prior_takes_a_contrastive_alpha_above_one():
  """llm_prior needs no baseline first and takes alpha in [0, 10]; other assistants [0, 1]."""
  c = importlib.import_module("configs.demo").get_config()
  c.generate.assistant = "llm_prior"
  c.generate.guidance_grid = (1.0, 2.0, 4.0)
  pipeline.check_config(c)
  assert pipeline.stage_order(c) == pipeline.STAGES  # no baseline runs before generation
  c.generate.guidance_grid = (1.0, 12.0)
  with pytest.raises(UserError, match=r"guidance_grid: alpha 12 is not in \[0, 10\]"):
    pipeline.check_config(c)
  c.generate.guidance_grid = (0.5, 2.0)
  c.generate.assistant = "mostpop"
  with pytest.raises(UserError, match=r"alpha 2 is not in \[0, 1\] for assistant=mostpop"):
    pipeline.check_config(c)
  c.generate.guidance_grid = ()
  c.generate.prior_rows = 8  # rows averaged by llm_prior only
  with pytest.raises(UserError, match="prior_rows=8.*assistant=mostpop"):
    pipeline.check_config(c)
  c.generate.assistant = "llm_prior"
  pipeline.check_config(c)
  c.generate.prior_rows = -1
  with pytest.raises(UserError, match="prior_rows=-1"):
    pipeline.check_config(c)


def test_a_misspelt_field_in_a_python_built_config_is_an_error_naming_it():
  """The tree is locked: a field configs/default.py does not define cannot be created."""
  c = importlib.import_module("configs.demo").get_config()
  with pytest.raises(AttributeError, match='"learning_rat" does not exist.*Did you mean '
                     '"learning_rate"'):
    c.train.learning_rat = 3e-4
  with pytest.raises(KeyError, match="num_beam"):
    c.generate["num_beam"] = 2
  c.train.learning_rate = 3e-4  # existing fields still change
  assert c.train.learning_rate == 3e-4
  baselines = importlib.import_module("configs.baselines").get_config()  # train_baseline.py's
  with pytest.raises(AttributeError, match="max_epoch"):
    baselines.train.max_epoch = 3
