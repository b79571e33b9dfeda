"""Checkpoints: round trip, last-k + best retention, corrupt latest -> previous with a warning."""
from __future__ import annotations

import glob
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigrec_jax import parallel
from bigrec_jax.model import LoraConfig
from bigrec_jax.train import checkpoint as ckpt_lib
from bigrec_jax.train import optimizer as opt_lib
from bigrec_jax.train import step as step_lib
from train_tiny import tiny_model


@pytest.fixture(scope="module")
def setup():
  model = tiny_model()
  lc = LoraConfig()
  mesh = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  opt, _ = opt_lib.make_optimizer(1e-3, 10)
  state = step_lib.init_state(model.config, lc, opt, 0, mesh)
  shardings = step_lib.state_shardings(model.config, lc, opt, mesh)
  lora_sh = step_lib.lora_shardings(model.config, lc, mesh)
  return state, shardings, lora_sh


def _at_step(state, k):
  """A distinct state per step (LoRA shifted by k)."""
  lora = jax.tree.map(lambda x: x + k, state.lora)
  return state.replace(step=jnp.asarray(k, jnp.int32), trainable=lora)


def _restore(ckpts, setup):
  state, shardings, lora_sh = setup
  shapes = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t)
  return ckpts.restore_latest(shapes(state), shardings, shapes(state.lora), lora_sh)


def test_round_trip_and_retention_of_last_k_plus_best(setup, tmp_path):
  state = setup[0]
  ckpts = ckpt_lib.Checkpoints(str(tmp_path / "ckpt"), keep=2)
  losses = {2: 1.0, 4: 3.0}
  for k in range(1, 6):
    s = _at_step(state, k)
    ckpts.save(s, s.lora, {"epoch": k, "history": [k]}, val_loss=losses.get(k))
  ckpts.wait()
  assert ckpts.all_steps() == [2, 4, 5]  # latest two + best validation loss (step 2)
  restored, best, meta = _restore(ckpts, setup)
  ckpts.close()
  assert int(restored.step) == 5 and meta["epoch"] == 5 and meta["history"] == [5]
  want = jax.device_get(_at_step(state, 5))
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(jax.device_get(restored))):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(want.lora), jax.tree.leaves(jax.device_get(best))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("damage", ["truncate_arrays", "wrong_fingerprint"])
def test_corrupt_latest_falls_back_to_previous_with_a_warning(setup, tmp_path, caplog, damage):
  state = setup[0]
  directory = tmp_path / "ckpt"
  ckpts = ckpt_lib.Checkpoints(str(directory), keep=3)
  for k in (1, 2):
    s = _at_step(state, k)
    ckpts.save(s, s.lora, {"epoch": 0})
  ckpts.close()
  if damage == "truncate_arrays":
    data = [p for p in glob.glob(str(directory / "2" / "state" / "**"), recursive=True)
            if os.path.isfile(p) and os.path.getsize(p) > 0]
    assert data
    for p in data:
      with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) // 3)
  else:  # a checkpoint whose arrays do not match what was saved (bit rot, partial copy)
    meta_file = directory / "2" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["fingerprint"] = (meta["fingerprint"] + 1) % 2**32
    meta_file.write_text(json.dumps(meta))
  ckpts = ckpt_lib.Checkpoints(str(directory), keep=3)
  with caplog.at_level(logging.WARNING):
    restored, _, _ = _restore(ckpts, setup)
  assert int(restored.step) == 1
  assert any("step 2" in r.getMessage() and "corrupt" in r.getMessage() for r in caplog.records)
  assert ckpts.all_steps() == [1]
  assert os.listdir(str(directory) + "_corrupt")
  # Training goes on and can save step 2 again.
  s = _at_step(state, 2)
  ckpts.save(s, s.lora, {"epoch": 0})
  ckpts.close()
  assert ckpts.all_steps() == [1, 2]


def test_half_written_checkpoint_of_a_killed_save_is_ignored(setup, tmp_path):
  """A save killed before orbax's final rename leaves only a temporary directory behind."""
  import shutil

  state = setup[0]
  directory = tmp_path / "ckpt"
  ckpts = ckpt_lib.Checkpoints(str(directory), keep=3)
  s = _at_step(state, 1)
  ckpts.save(s, s.lora, {"epoch": 0})
  ckpts.close()
  partial = directory / "2.orbax-checkpoint-tmp-1234"
  shutil.copytree(directory / "1", partial)
  for p in glob.glob(str(partial / "state" / "**"), recursive=True):
    if os.path.isfile(p):
      os.truncate(p, 0)
  ckpts = ckpt_lib.Checkpoints(str(directory), keep=3)
  restored, _, _ = _restore(ckpts, setup)
  assert int(restored.step) == 1 and ckpts.all_steps() == [1]
  ckpts.close()


def _full_setup():
  model = tiny_model()
  mesh = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  opt, _ = opt_lib.make_optimizer(1e-3, 10, decay_mask=opt_lib.hf_decay_mask)
  state = step_lib.init_state(model.config, None, opt, 0, mesh, params=model.params)
  shardings = step_lib.state_shardings(model.config, None, opt, mesh)
  return state, shardings, step_lib.trainable_shardings(model.config, None, mesh)


def test_full_state_round_trip_and_a_mode_mismatch_is_a_clear_error(tmp_path):
  """train.mode=full saves every weight with its moments and restores them bit for bit; a run
  of the other mode on the same checkpoints gets a UserError naming both modes and the checkpoint
  is left where it is (not quarantined as corrupt)."""
  from bigrec_jax.files import UserError

  full = _full_setup()
  directory = str(tmp_path / "ckpt")
  ckpts = ckpt_lib.Checkpoints(directory, keep=2, mode="full")
  s = _at_step(full[0], 3)
  ckpts.save(s, s.trainable, {"epoch": 0})
  ckpts.close()
  ckpts = ckpt_lib.Checkpoints(directory, keep=2, mode="full")
  restored, best, meta = _restore(ckpts, full)
  assert meta["mode"] == "full" and int(restored.step) == 3
  for a, b in zip(jax.tree.leaves(jax.device_get(s)), jax.tree.leaves(jax.device_get(restored))):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(best) == jax.tree.structure(full[0].trainable)
  ckpts.close()

  lora_setup = (step_lib.init_state(tiny_model().config, LoraConfig(), opt_lib.make_optimizer(
      1e-3, 10)[0], 0, parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])),) + full[1:]
  ckpts = ckpt_lib.Checkpoints(directory, keep=2, mode="lora")
  with pytest.raises(UserError, match="train.mode=full run, but this run has train.mode=lora"):
    _restore(ckpts, lora_setup)
  ckpts.close()
  assert ckpts.all_steps() == [3] and not os.path.exists(directory + "_corrupt")


def _lora_setup(targets):
  model = tiny_model()
  lc = LoraConfig(targets=targets)
  mesh = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  opt, _ = opt_lib.make_optimizer(1e-3, 10)
  return (step_lib.init_state(model.config, lc, opt, 0, mesh),
          step_lib.state_shardings(model.config, lc, opt, mesh),
          step_lib.lora_shardings(model.config, lc, mesh))


@pytest.mark.parametrize("recorded", [True, False])
def test_other_lora_targets_are_another_config_not_a_corrupt_checkpoint(setup, tmp_path, recorded):
  """Resuming with other lora.targets names the fields (or, for a checkpoint too old to record
  them, says it holds another tree) and leaves the good checkpoint in place."""
  from bigrec_jax.files import UserError

  directory = str(tmp_path / "ckpt")
  made = {"lora.rank": 8, "lora.targets": ("q_proj", "v_proj")}
  ckpts = ckpt_lib.Checkpoints(directory, keep=2, made_with=made)
  s = _at_step(setup[0], 3)
  ckpts.save(s, s.lora, {"epoch": 0})
  ckpts.close()
  if not recorded:  # as written before checkpoints recorded made_with
    meta_file = os.path.join(directory, "3", "meta", "metadata")
    meta = json.loads(open(meta_file).read())
    del meta["made_with"]
    open(meta_file, "w").write(json.dumps(meta))
  other = _lora_setup(("q_proj", "k_proj", "v_proj"))
  ckpts = ckpt_lib.Checkpoints(directory, keep=2, made_with={
      "lora.rank": 8, "lora.targets": ("q_proj", "k_proj", "v_proj")})
  match = ("lora.targets=\\(q_proj,k_proj,v_proj\\) in this run.*--config.lora.targets=\\("
           "q_proj,v_proj\\)" if recorded else "another LoRA config")
  with pytest.raises(ckpt_lib.ConfigMismatch, match=match) as e:
    _restore(ckpts, other)
  assert isinstance(e.value, UserError) and "corrupt" not in str(e.value)
  ckpts.close()
  assert ckpts.all_steps() == [3] and not os.path.exists(directory + "_corrupt")
  # The same config resumes it.
  ckpts = ckpt_lib.Checkpoints(directory, keep=2, made_with=made)
  assert int(_restore(ckpts, setup)[0].step) == 3
  ckpts.close()
