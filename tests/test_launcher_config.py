"""Every stage launcher takes --config plus --config.x.y overrides, its short flags are the same
fields (one default: the config's), and config.check refuses a bad value (exit 2, naming it).

The launchers run in a subprocess with the stage function replaced by one that records what it
was called with (the options built from the config) and exits, so nothing heavy loads.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Replaces each MODULE:NAME of a comma-separated list by a function that records its arguments in
# $SEEN (JSON); the last one then exits 0, the others return None. Then runs the launcher as
# `python LAUNCHER ARGS...` would.
_DRIVER = """
import dataclasses, functools, importlib, json, os, runpy, sys
targets, launcher = sys.argv[1].split(","), sys.argv[2]
seen = {}

def plain(v):
  if dataclasses.is_dataclass(v):
    return plain(dataclasses.asdict(v))
  if hasattr(v, "to_dict"):
    return v.to_dict()
  if isinstance(v, dict):
    return {k: plain(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [plain(x) for x in v]
  return v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)

def fake(target, *args, **kw):
  seen[target] = plain({"args": list(args), **kw})
  json.dump(seen, open(os.environ["SEEN"], "w"))
  if target == targets[-1]:
    raise SystemExit(0)

for target in targets:
  module, name = target.split(":")
  setattr(importlib.import_module(module), name, functools.partial(fake, target))
sys.argv = [launcher] + sys.argv[3:]
runpy.run_path(launcher, run_name="__main__")
"""


def _env(**extra):
  return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", **extra)


def _called(tmp_path, targets, launcher, *args):
  """What the launcher passed to the last of `targets` ("module:function,...")."""
  seen = tmp_path / "seen.json"
  r = subprocess.run([sys.executable, "-c", _DRIVER, targets,
                      os.path.join(ROOT, "launch", launcher), *args], cwd=ROOT,
                     capture_output=True, text=True, timeout=300, env=_env(SEEN=str(seen)))
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(seen.read_text())[targets.split(",")[-1]]


def _refused(launcher, *args):
  r = subprocess.run([sys.executable, os.path.join(ROOT, "launch", launcher), *args], cwd=ROOT,
                     capture_output=True, text=True, timeout=300, env=_env())
  assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-3000:])
  return " ".join(r.stderr.split())


@pytest.fixture
def files(tmp_path):
  """Paths the launchers check before the (replaced) stage runs."""
  (tmp_path / "data").mkdir()
  rows = tmp_path / "rows.json"
  rows.write_text("[]")
  (tmp_path / "titles.txt").write_text("Toy Story\n")
  return {"data": str(tmp_path / "data"), "rows": str(rows), "out": str(tmp_path / "out"),
          "titles": str(tmp_path / "titles.txt")}


def test_prepare_data_builds_its_options_from_the_config(tmp_path, files):
  seen = _called(tmp_path, "bigrec_jax.data.prepare:prepare", "prepare_data.py",
                 f"--out_dir={files['out']}", "--config.data.train_fraction=0.7",
                 "--config.data.prompt_template=chatml", "--history_len=5", "--seed=3")
  dataset, out_dir, interactions, items, o = seen["args"]
  assert (dataset, out_dir, interactions, items) == ("ml-100k", files["out"], None, None)
  assert (o["train_fraction"], o["history_len"], o["few_shot_seed"]) == (0.7, 5, 3)
  assert o["prompt_template"] == "chatml" and o["valid_fraction"] == 0.1
  assert o["few_shot_sample"] == 1024  # --sample's default is the config's data.sample
  # Another config file: its data section is the default of every flag.
  seen = _called(tmp_path, "bigrec_jax.data.prepare:prepare", "prepare_data.py",
                 f"--out_dir={files['out']}", "--config=configs/tiny.py")
  from configs import tiny

  d = tiny.get_config().data
  assert (seen["args"][4]["eval_sample_size"], seen["args"][4]["few_shot_sample"]) == (
      d.valid_test_size, d.sample)


def test_generate_builds_its_options_from_the_config(tmp_path, files):
  seen = _called(tmp_path, "bigrec_jax.generate.runner:run", "generate.py",
                 f"--input={files['rows']}", f"--output={files['out']}.json",
                 "--config.generate.bucket_multiple=16", "--num_beams=2",
                 "--config.data.prompt_template=chatml", "--mesh_shape=1,1,1",
                 "--config.model.kernels=xla")
  o = seen["args"][2]
  assert (o["bucket_multiple"], o["num_beams"], o["num_return_sequences"]) == (16, 2, 2)
  assert o["prompt_format"]["template"] == "chatml"
  assert seen["mesh_shape"] == [1, 1, 1] and seen["kernels"] == "xla"
  assert seen["model_path"] is None and seen["dtype"] == "float32"


def test_evaluate_builds_its_options_from_the_config(tmp_path, files):
  seen = _called(tmp_path, "bigrec_jax.evaluate.run:evaluate_predictions", "evaluate.py",
                 f"--data_dir={files['data']}", f"--valid_predictions={files['rows']}",
                 f"--test_predictions={files['rows']}", f"--out_dir={files['out']}",
                 "--config.ground.pop_gammas=(0.0,2.5)", "--ks=1,5",
                 "--config.ground.both=false", "--config.model.kernels=xla")
  o = seen["args"][0]
  assert o["pop_gammas"] == [0.0, 2.5] and o["ks"] == [1, 5] and o["both"] is False
  assert o["kernels"] == "xla"  # the embedding model's kernels, as training's
  assert len(o["cf_gammas"]) == 199 and o["embed_batch_size"] == 16  # the config's defaults


def test_recommend_takes_its_search_from_the_config(tmp_path, files):
  seen = _called(tmp_path, "bigrec_jax.recommend:recommend", "recommend.py",
                 f"--data_dir={files['data']}", "--liked=Toy Story",
                 "--config.generate.max_new_tokens=7", "--num_beams=2",
                 "--config.data.prompt_template=chatml")
  assert (seen["max_new_tokens"], seen["num_beams"], seen["prompt_template"]) == (7, 2, "chatml")


def test_build_catalog_embeds_with_the_config(tmp_path, files):
  targets = "bigrec_jax.model:load_model,bigrec_jax.ground.catalog_shards:embed_catalog_shards"
  args = (f"--titles={files['titles']}", f"--out_dir={files['out']}", "--config=configs/tiny.py",
          "--config.ground.embed_batch_size=5", "--config.model.kernels=xla")
  seen = _called(tmp_path, targets, "build_catalog.py", *args)
  assert seen["batch_size"] == 5 and seen["args"][1] == ["Toy Story"]
  load = json.loads((tmp_path / "seen.json").read_text())["bigrec_jax.model:load_model"]
  assert load["kernels"] == "xla"


def test_train_baseline_takes_its_hyperparameters_from_the_config(tmp_path, files):
  seen = _called(tmp_path, "bigrec_jax.baselines.run:train_and_evaluate", "train_baseline.py",
                 f"--data_dir={files['data']}", f"--workdir={files['out']}",
                 "--config.train.max_epochs=3", "--config.sasrec.heads=2")
  assert seen["args"][0]["train"]["max_epochs"] == 3 and seen["args"][0]["sasrec"]["heads"] == 2


@pytest.mark.parametrize("launcher, args", [
    ("prepare_data.py", ["--out_dir={out}"]),
    ("generate.py", ["--input={rows}", "--output={out}.json"]),
    ("evaluate.py", ["--data_dir={data}", "--valid_predictions={rows}",
                     "--test_predictions={rows}", "--out_dir={out}"]),
    ("recommend.py", ["--data_dir={data}", "--liked=Toy Story"]),
    ("build_catalog.py", ["--titles={titles}", "--out_dir={out}"]),
])
def test_each_launcher_refuses_a_misspelt_field_and_a_bad_value(files, launcher, args):
  args = [a.format(**files) for a in args]
  flat = _refused(launcher, *args, "--config.generate.num_beam=2")
  assert "--config.generate.num_beam: no such config field" in flat
  assert "did you mean --config.generate.num_beams" in flat
  # The same checker as the pipeline's, naming the field as it was given.
  flat = _refused(launcher, *args, "--config.ground.gamma_batch=0")
  assert "--config.ground.gamma_batch=0: must be >= 1" in flat
  assert not os.path.exists(files["out"])


def test_a_short_flag_is_its_config_field(files):
  common = [f"--input={files['rows']}", f"--output={files['out']}.json"]
  assert "--num_beams=0: must be >= 1" in _refused("generate.py", *common, "--num_beams=0")
  flat = _refused("generate.py", *common, "--num_beams=2", "--config.generate.num_beams=3")
  assert "--num_beams and --config.generate.num_beams are one field" in flat
  flat = _refused("generate.py", *common, "--config.generate.num_beams=0")
  assert "--config.generate.num_beams=0: must be >= 1" in flat  # named as it was given


def test_the_pipeline_checks_the_baselines_before_the_first_stage(tmp_path):
  flat = _refused("pipeline.py", "--config=configs/tiny.py", f"--workdir={tmp_path}/w",
                  "--config.baselines.train.max_epochs=0")
  assert "--config.baselines.train.max_epochs must be >= 1" in flat
  assert not os.path.exists(tmp_path / "w")


# ----------------------------------------------------------------------------- prompt format


def test_stats_json_records_the_prompt_format():
  from bigrec_jax import config as config_lib
  from configs import default

  from bigrec_jax.data import prepare

  c = default.get_config()
  c.data.prompt_template = "chatml"
  c.data.valid_test_size = 10
  built = prepare.build("ml-100k", options=config_lib.prepare_options(c))
  assert built.stats["prompt_format"] == {"template": "chatml", "domain": "movie",
                                          "answer": '"Title"'}
  assert built.stats["options"]["prompt_template"] == "chatml"


def test_the_report_states_the_prompt_format():
  from bigrec_jax import pipeline

  prepared = {"prompt_format": {"template": "alpaca", "domain": "movie", "answer": '"Title"'}}
  line = pipeline.prompt_format_line(prepared, None)
  assert line == 'Prompt format: `alpaca` template, movie wording, answer `"Title"`.'
  generated = {"valid": {"prompt_format": {"template": "chatml", "domain": "movie",
                                           "answer": '"Title"'}}}
  line = pipeline.prompt_format_line(prepared, generated)
  assert line.startswith("Prompt format: `chatml` template") and "prepared under `alpaca`" in line
  assert pipeline.prompt_format_line({}, None) == ""  # a directory prepared before this
