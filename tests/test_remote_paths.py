"""gs:// workdirs: every file goes through the files path layer, with no network.

A fake GCS (an in-memory fsspec filesystem answering for gs://, the way gcsfs does) stands in for
a bucket: the pipeline's stages run against it from an empty working directory, which must stay
empty, and a rerun must find every stage marker in the bucket.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
from etils.epath import backend as epath_backend
from etils.epath import gpath as epath_gpath
from fsspec.implementations.memory import MemoryFileSystem

from bigrec_jax import cli, files
from bigrec_jax.files import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeGCS(MemoryFileSystem):
  """gcsfs's path conventions ('bucket/key', no leading slash) over a private in-memory store."""
  protocol = ("gs", "gcs")
  root_marker = ""

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        path = path[len(prefix):]
    return path.rstrip("/")


@pytest.fixture
def bucket(monkeypatch, tmp_path):
  """A fresh fake gs:// filesystem; the test runs in an empty working directory `tmp_path/cwd`."""
  monkeypatch.setattr(FakeGCS, "store", {})
  monkeypatch.setattr(FakeGCS, "pseudo_dirs", [""])
  monkeypatch.setattr(epath_gpath, "_is_tf_installed", lambda: False)  # fsspec, not tf.io.gfile
  for protocol in ("gs", "gcs"):
    monkeypatch.setitem(sys.modules["fsspec.registry"]._registry, protocol, FakeGCS)
  epath_backend.fsspec_backend._get_filesystem.cache_clear()
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield cwd
  epath_backend.fsspec_backend._get_filesystem.cache_clear()


def test_files_layer_round_trips_on_an_object_store(bucket):
  files.write_json("gs://b/run/stages/prepare.json", {"seconds": 1.0})
  files.write_npy("gs://b/run/baselines/m/scores.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
  with files.atomic_path("gs://b/run/report.png") as tmp:  # libraries that need a real file
    assert not files.is_remote(tmp)
    with open(tmp, "wb") as f:
      f.write(b"png")
  assert files.read_json("gs://b/run/stages/prepare.json") == {"seconds": 1.0}
  assert files.read_npy("gs://b/run/baselines/m/scores.npy", ndim=2).shape == (2, 3)
  assert files.read_bytes("gs://b/run/report.png") == b"png"
  assert files.isdir("gs://b/run") and files.isfile("gs://b/run/report.png")
  assert files.listdir("gs://b/run") == ["baselines", "report.png", "stages"]
  assert not [k for k in FakeGCS.store if k.endswith(".tmp")]  # the staged objects are renamed
  with files.local_copy("gs://b/run/baselines") as local:
    assert np.load(os.path.join(local, "m", "scores.npy")).shape == (2, 3)
  files.move("gs://b/run/baselines", "gs://b/old")
  assert files.listdir("gs://b/old/m") == ["scores.npy"] and not files.exists("gs://b/run/baselines")
  with pytest.raises(RuntimeError):  # a failed write leaves the old object whole
    with files.atomic_path("gs://b/run/report.png") as tmp:
      open(tmp, "wb").write(b"half")
      raise RuntimeError
  assert files.read_bytes("gs://b/run/report.png") == b"png"
  assert os.listdir(bucket) == []


def test_sharded_catalog_reads_row_ranges_from_the_bucket(bucket):
  from bigrec_jax.ground import catalog_shards

  table = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
  catalog_shards.build_shards("gs://b/catalog", 40, 3, lambda lo, hi: table[lo:hi],
                              source="synthetic", config="c", num_shards=3, process_index=0,
                              process_count=1, log=lambda _: None)
  assert catalog_shards.build_shards("gs://b/catalog", 40, 3, lambda lo, hi: 1 / 0,
                                     source="synthetic", config="c", process_index=0,
                                     process_count=1) == []  # every shard found done
  catalog = catalog_shards.ShardedCatalog("gs://b/catalog")
  np.testing.assert_array_equal(catalog.read_all(), table)
  out = np.empty((9, 3), np.float32)
  catalog.read_rows(11, 20, out, chunk_rows=4)
  np.testing.assert_array_equal(out, table[11:20])
  assert os.listdir(bucket) == []


def test_adapters_and_hf_checkpoints_are_swapped_into_the_bucket_and_read_back(bucket):
  import jax

  from bigrec_jax.model import LlamaConfig, LoraConfig, export, loading, lora as lora_lib
  from bigrec_jax.model.llama import abstract_variables
  from bigrec_jax.train.loop import _write_then_swap

  config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=2,
                       num_heads=2, num_kv_heads=1, head_dim=8, tie_word_embeddings=False)
  lora_config = LoraConfig(rank=2, alpha=4.0, dropout=0.0)
  rng = np.random.default_rng(0)  # random trees of the right shapes (no init to compile)
  lora = {"layers": {name: {"a": rng.standard_normal((2, d_in, 2), np.float32),
                            "b": rng.standard_normal((2, 2, d_out), np.float32)}
                     for name, (d_in, d_out) in lora_lib.target_dims(config).items()
                     if name in lora_config.targets}}
  for _ in range(2):  # the second export replaces the first one in place
    _write_then_swap("gs://b/run/train/adapter", lambda tmp: lora_lib.export_peft(
        tmp, lora, lora_config, config, base_model=""))
  assert files.listdir("gs://b/run/train") == ["adapter"]
  imported, imported_config = lora_lib.import_peft("gs://b/run/train/adapter", config)
  assert imported_config.rank == 2
  np.testing.assert_allclose(imported["layers"]["q_proj"]["a"], lora["layers"]["q_proj"]["a"])

  params = jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape, np.float32),
                                  abstract_variables(config)[0]["params"])
  _write_then_swap("gs://b/run/train/model", lambda tmp: export.save_pretrained(tmp, params, config))
  assert files.listdir("gs://b/run/train/model") == ["config.json", "model.safetensors"]
  with files.local_copy("gs://b/run/train/model") as local:  # what load_model reads
    loaded = loading._build_params(config, loading._SafetensorsDir(local), None)
  np.testing.assert_array_equal(loaded["embed"], params["embed"])
  assert not [k for k in FakeGCS.store if k.endswith(".tmp")]
  assert os.listdir(bucket) == []


def test_cli_checks_a_remote_workdir_without_touching_the_local_disk(bucket):
  files.write_json("gs://b/run/metrics.json", {})
  assert cli.output_dir("--workdir", "gs://b/run") == "gs://b/run"
  assert cli.input_file("--metrics", "gs://b/run/metrics.json")
  with pytest.raises(UserError, match="exists and is not a directory"):
    cli.output_dir("--workdir", "gs://b/run/metrics.json")
  with pytest.raises(UserError, match="no such file"):
    cli.input_file("--metrics", "gs://b/run/missing.json")
  with pytest.raises(UserError, match="memory:// is not a filesystem"):
    cli.output_dir("--workdir", "memory://run")
  assert os.listdir(bucket) == []


def _synthetic_movielens(directory: str) -> tuple[str, str]:
  """ratings.dat / movies.dat of 40 users and 30 movies, written to `directory` (the bucket)."""
  rng = np.random.default_rng(0)
  movies = [f"{i}::Movie {i} ({1970 + i})::Drama" for i in range(1, 31)]
  ratings = [f"{u}::{m}::5::{1000 * u + t}" for u in range(1, 41)
             for t, m in enumerate(rng.choice(np.arange(1, 31), size=12, replace=False))]
  files.atomic_write(f"{directory}/movies.dat", "\n".join(movies) + "\n")
  files.atomic_write(f"{directory}/ratings.dat", "\n".join(ratings) + "\n")
  return f"{directory}/ratings.dat", f"{directory}/movies.dat"


def _tiny_config(stages):
  config = importlib.import_module("configs.tiny").get_config()
  config.pipeline.stages = tuple(stages)
  config.data.dataset = "ml-1m"
  config.data.interactions_file, config.data.items_file = _synthetic_movielens("gs://b/raw")
  config.baselines.models = ("mostpop",)
  config.ground.cf_sources = ()
  return config


def test_pipeline_stages_write_only_to_the_bucket_and_resume_from_its_markers(bucket):
  from bigrec_jax import pipeline

  stages = ("prepare", "baselines")
  workdir = "gs://b/runs/tiny"
  logs: list[str] = []
  pipeline.run_pipeline(_tiny_config(stages), workdir, logs.append)
  assert os.listdir(bucket) == []
  assert not os.path.exists(os.path.join(ROOT, "gs:"))
  assert files.listdir(f"{workdir}/stages") == ["baselines.json", "prepare.json"]
  assert files.exists(f"{workdir}/data/stats.json") and files.exists(f"{workdir}/data/items.tsv")
  scores = files.read_npy(f"{workdir}/baselines/mostpop/scores_test_5000.npy", ndim=2)
  assert scores.shape[0] == files.read_json(f"{workdir}/data/stats.json")["examples"]["test_5000"]
  assert files.read_json(f"{workdir}/baselines/mostpop/metrics.json")["methods"]["mostpop"]
  assert not [k for k in FakeGCS.store if k.endswith(".tmp")]

  # The evaluate stage needs the LLM; its metrics.json has the baselines' layout, so the
  # report stage can run on the mostpop numbers as if evaluate had.
  files.write_json(f"{workdir}/eval/metrics.json",
                   files.read_json(f"{workdir}/baselines/mostpop/metrics.json"))
  files.write_json(f"{workdir}/stages/evaluate.json", {"seconds": 0.0})
  stages += ("report",)
  logs.clear()
  pipeline.run_pipeline(_tiny_config(stages), workdir, logs.append)
  assert any("report: starting" in line for line in logs), logs
  assert "| mostpop |" in files.read_text(f"{workdir}/report.md")

  logs.clear()
  pipeline.run_pipeline(_tiny_config(stages), workdir, logs.append)
  for stage in stages:
    assert any(f"{stage}: done already" in line for line in logs), (stage, logs)
  assert not any("starting" in line for line in logs)
  assert os.listdir(bucket) == []
  assert not [k for k in FakeGCS.store if k.endswith(".tmp")]


def test_report_plots_and_tensorboard_scalars_go_to_the_bucket(bucket):
  from bigrec_jax import pipeline
  from bigrec_jax.train.loop import summary_writer

  paths = pipeline.Paths("gs://b/runs/tiny")
  writer = summary_writer(os.path.join(paths.train, "tb"))
  for step, loss in enumerate((3.0, 2.5, 2.0)):
    writer.add_scalar("train/loss", loss, step)
  writer.close()
  assert pipeline.read_scalars(os.path.join(paths.train, "tb"))["train/loss"][-1] == (2, 2.0)
  assert pipeline.plot_training_curve(paths)
  assert files.read_bytes(f"{paths.workdir}/train_curve.png")[:4] == b"\x89PNG"
  assert os.listdir(bucket) == []


def test_a_gs_workdir_without_gcsfs_stops_before_any_work(tmp_path):
  # A gcsfs that fails to import (as when it is not installed), and no TensorFlow route.
  stub = tmp_path / "stub" / "gcsfs"
  stub.mkdir(parents=True)
  (stub / "__init__.py").write_text("raise ImportError('gcsfs is not installed')\n")
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  env = {**os.environ, "PYTHONPATH": str(tmp_path / "stub"), "EPATH_USE_TF": "false"}
  r = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "pipeline.py"),
                      f"--config={ROOT}/configs/tiny.py", "--workdir=gs://bucket/x",
                      "--stages=prepare"], cwd=cwd, env=env, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 2, r.stderr[-3000:]
  assert "pip install gcsfs" in r.stderr and "Traceback" not in r.stderr
  assert "prepare" not in r.stdout
  assert os.listdir(cwd) == []
