"""Stage markers record the config fields and input stages they were made with (stages faked)."""
from __future__ import annotations

import json
import os

import pytest

from bigrec_jax import pipeline as pl
from bigrec_jax.files import UserError
from configs import tiny


@pytest.fixture
def ran(monkeypatch):
  """Replaces every stage by a stub; returns the list of (stage, fresh) calls."""
  calls = []
  monkeypatch.setattr(pl, "prepare_stage", lambda c, p: calls.append(("prepare", None)))
  monkeypatch.setattr(pl, "train_stage", lambda c, p, fresh: calls.append(("train", fresh)))
  monkeypatch.setattr(pl, "generate_stage", lambda c, p: calls.append(("generate", None)))
  monkeypatch.setattr(pl, "baselines_stage",
                      lambda c, p, log, fresh: calls.append(("baselines", fresh)))
  monkeypatch.setattr(pl, "evaluate_stage", lambda c, p, log: calls.append(("evaluate", None)))
  monkeypatch.setattr(pl, "write_report", lambda c, p: calls.append(("report", None)))
  return calls


def _go(workdir, log=None, **overrides):
  config = tiny.get_config()
  for dotted, value in overrides.items():
    section, field = dotted.split("__")
    config[section][field] = value
  lines = [] if log is None else log
  pl.run_pipeline(config, str(workdir), log=lines.append)
  return lines


def test_a_changed_field_is_an_error_naming_it_and_the_force_flag(ran, tmp_path):
  _go(tmp_path)
  assert [s for s, _ in ran] == list(pl.STAGES)
  ran.clear()
  record = json.loads((tmp_path / "stages" / "train.json").read_text())["made_with"]
  assert record["config"]["lora.targets"] == ["q_proj", "v_proj"] and len(record["hash"]) == 64
  assert set(record["inputs"]) == {"prepare"}
  _go(tmp_path)
  assert ran == []  # same config: every stage skipped
  with pytest.raises(UserError) as e:
    _go(tmp_path, lora__targets=("q_proj", "k_proj", "v_proj"))
  message = str(e.value)
  assert "stage train" in message and "lora.targets: (q_proj,v_proj) -> (q_proj,k_proj,v_proj)" \
      in message and "--force_stage=train" in message and "generate, evaluate, report" in message
  assert ran == []  # refused before any stage ran
  # Fields that do not change what a stage makes are not compared.
  _go(tmp_path, train__log_every_steps=5, model__remat=True)
  assert ran == []


def test_forcing_a_stage_redoes_what_reads_it(ran, tmp_path):
  _go(tmp_path)
  ran.clear()
  log = _go(tmp_path, train__learning_rate=3e-4, pipeline__force_stages=("train",))
  assert ran == [("train", True), ("generate", None), ("evaluate", None), ("report", None)]
  assert any("generate: starting again (it reads train" in line for line in log)
  ran.clear()
  _go(tmp_path, train__learning_rate=3e-4)
  assert ran == []
  # A stage redone by an earlier command makes what reads it stale too: redone, and said so.
  _go(tmp_path, train__learning_rate=3e-4, pipeline__stages=("prepare",),
      pipeline__force_stages=("prepare",))
  ran.clear()
  log = _go(tmp_path, train__learning_rate=3e-4)
  assert [s for s, _ in ran] == list(pl.STAGES[1:])
  assert ("train", True) in ran and ("baselines", True) in ran


def test_a_cheap_stage_is_redone_and_old_markers_pass(ran, tmp_path):
  _go(tmp_path)
  ran.clear()
  log = _go(tmp_path, pipeline__compare=("other=" + str(tmp_path),))
  assert ran == [("report", None)]
  assert any("made with other values: pipeline.compare" in line for line in log)
  # Markers written before stages recorded their config: reused as before.
  for stage in pl.STAGES:
    marker = tmp_path / "stages" / f"{stage}.json"
    record = json.loads(marker.read_text())
    del record["made_with"]
    marker.write_text(json.dumps(record))
  ran.clear()
  _go(tmp_path, generate__num_beams=8, generate__num_return_sequences=8)
  assert ran == []
  assert os.path.exists(tmp_path / "stages" / "train.json")


@pytest.mark.parametrize("grid", [
    dict(generate__assistant="mostpop", generate__guidance_grid=(0.5, 1.0)),
    dict(generate__length_penalty_grid=(0.0, 1.0))], ids=["alpha", "length_penalty"])
def test_generation_with_a_search_grid_reads_the_grounding_fields(ran, tmp_path, grid):
  _go(tmp_path, **grid)
  _go(tmp_path, **grid)  # unchanged: skipped
  with pytest.raises(UserError, match="stage generate .*ground.pop_gammas"):
    _go(tmp_path, **grid, ground__pop_gammas=(0.0, 1.0))
  # Without a grid, generation does not read them: only evaluate is stale.
  _go(tmp_path / "plain")
  with pytest.raises(UserError, match="stage evaluate .*ground.pop_gammas"):
    _go(tmp_path / "plain", ground__pop_gammas=(0.0, 1.0))


def test_a_resumed_train_stage_with_other_lora_targets_names_the_force_flag(monkeypatch, tmp_path):
  """The train stage died (no marker) and its checkpoints were made with other LoRA targets."""
  from bigrec_jax.train import checkpoint, loop

  def refuse(config, workdir):
    raise checkpoint.ConfigMismatch(f"{workdir}/checkpoints: checkpoint step 4 was made with "
                                    "another config (lora.targets=(q_proj,k_proj) in this run)")

  monkeypatch.setattr(loop, "train", refuse)
  with pytest.raises(UserError, match=r"lora.targets=\(q_proj,k_proj\).*--force_stage=train "
                     "trains afresh"):
    pl.train_stage(tiny.get_config(), pl.Paths(str(tmp_path)))
