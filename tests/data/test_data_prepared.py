"""The real ML-100K through launch/prepare_data.py, and the validating reader of prepared files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bigrec_jax.data import prepare, prepared, prompts
from bigrec_jax.files import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = os.path.join(ROOT, "launch", "prepare_data.py")
CONTRACT_FILES = ("items.tsv", "item_map.json", "train.json", "valid.json", "test.json",
                  "valid_5000.json", "test_5000.json", "popularity.json", "stats.json")


def _launch(*flags):
  return subprocess.run([sys.executable, LAUNCHER, *flags], capture_output=True, text=True,
                        cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
  """The embedded ML-100K prepared by the launcher (as a user would), with a few-shot file."""
  out = tmp_path_factory.mktemp("ml100k")
  result = _launch("--dataset=ml-100k", f"--out_dir={out}", "--sample=1024", "--seed=1")
  assert result.returncode == 0, result.stderr
  print(result.stdout)
  return str(out), result.stdout


def test_ml100k_stats(ml100k):
  out, stdout = ml100k
  assert "943 users, 1682 items, 100000 interactions" in stdout
  for name in CONTRACT_FILES + ("train_n1024_seed1.json",):
    assert os.path.exists(os.path.join(out, name)), name
  assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
  stats = json.load(open(os.path.join(out, "stats.json")))
  print(json.dumps({k: stats[k] for k in ("users", "items", "interactions", "examples",
                                          "duplicate_titles")}))
  assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100000)
  assert stats["duplicate_titles"] == 22
  ex = stats["examples"]
  total = ex["train"] + ex["valid"] + ex["test"]
  assert ex["train"] == int(total * 0.8) and ex["valid"] == int(total * 0.9) - int(total * 0.8)
  assert ex["valid_5000"] == min(5000, ex["valid"]) and ex["train_n1024_seed1"] == 1024


def test_ml100k_rows(ml100k):
  out, _ = ml100k
  data = prepared.load_prepared(out)
  assert data.num_items == 1682 and data.titles[0] == "Toy Story"
  train, valid, test = data.rows("train"), data.rows("valid"), data.rows("test")
  stamps = [r["target_timestamp"] for r in train + valid + test]
  assert stamps == sorted(stamps)
  assert all(len(r["history_item_ids"]) == 10 for r in train)
  assert all(r["output"] == prompts.quote(data.titles[r["target_item_id"]]) for r in test)
  # duplicate titles: the row keeps its own target id, the groups join them
  groups = data.title_groups()
  assert len(set(groups.tolist())) == 1682 - 23  # 22 titles carried by 45 ids
  few = data.rows("train_n1024_seed1")
  assert len(few) == 1024 and all(r in train for r in few[:20])


def test_ml100k_popularity_is_training_only(ml100k):
  out, _ = ml100k
  data = prepared.load_prepared(out)
  train, test = data.rows("train"), data.rows("test")
  targets = np.bincount([r["target_item_id"] for r in train], minlength=data.num_items)
  assert np.all(data.popularity >= targets)
  seen = {i for r in train for i in [r["target_item_id"], *r["history_item_ids"]]}
  assert {i for i in range(data.num_items) if data.popularity[i] > 0} == seen
  test_only = {r["target_item_id"] for r in test} - seen
  assert test_only and all(data.popularity[i] == 0 for i in test_only)


def test_launcher_bad_flags_exit_2_without_traceback(tmp_path):
  cases = [(["--dataset=ml-5m", f"--out_dir={tmp_path}/a"], "--dataset=ml-5m"),
           (["--dataset=ml-1m", f"--out_dir={tmp_path}/b", f"--interactions={tmp_path}/nope.dat",
             f"--items={tmp_path}/nope2.dat"], "nope.dat: no such file"),
           (["--history_len=0", f"--out_dir={tmp_path}/c"], "--history_len=0: must be >= 1")]
  for flags, message in cases:
    result = _launch(*flags)
    assert result.returncode == 2, (flags, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.startswith("error:")
    assert message in result.stderr.replace("\n  ", " "), result.stderr
  assert not os.listdir(tmp_path)  # nothing written


@pytest.fixture
def toy_prepared(tmp_path, toy_dat):
  out = tmp_path / "toy"
  prepare.prepare("ml-1m", str(out), *toy_dat,
                  prepare.PrepareOptions(history_len=2, min_history=2, keep_last_of_short_users=True,
                                         target_rating_above="none"))
  return str(out)


def _rewrite(path, edit):
  rows = json.load(open(path))
  edit(rows)
  prepared.write_rows(path, rows)


@pytest.mark.parametrize("edit, what", [
    (lambda rows: rows[1].pop("output"), "row 1 .*missing 'output'"),
    (lambda rows: rows[2].update(target_item_id=99), "row 2 .*unknown item id 99"),
    (lambda rows: rows[0]["history_item_ids"].append(-1), "row 0 .*unknown item id -1"),
    (lambda rows: rows[0].update(output='"Gamma (1992)'), "row 0 .*quoted title"),
    (lambda rows: rows[0].update(output='"Wrong"'), "row 0 .*not the title of target_item_id"),
    (lambda rows: rows[0].update(domain="book"), "row 0 .*unknown domain"),
])
def test_bad_rows_name_file_and_row(toy_prepared, edit, what):
  path = os.path.join(toy_prepared, "train.json")
  _rewrite(path, edit)
  with pytest.raises(UserError, match=what) as e:
    prepared.load_prepared(toy_prepared).rows("train")
  assert "train.json" in str(e.value)


@pytest.mark.parametrize("line, what", [
    ("1\tBeta\tThe (1991)", "items.tsv:2: title contains a tab"),
    ('1\t"Beta, The (1991)"', "items.tsv:2: title has surrounding spaces or double quotes"),
    ("7\tBeta", "items.tsv:2: item ids must be 0, 1, 2"),
])
def test_bad_catalog_names_file_and_line(toy_prepared, line, what):
  path = os.path.join(toy_prepared, "items.tsv")
  lines = open(path).read().splitlines()
  lines[1] = line
  open(path, "w").write("\n".join(lines) + "\n")
  with pytest.raises(UserError, match=what):
    prepared.load_prepared(toy_prepared)


def test_toy_prepared_files(toy_prepared):
  data = prepared.load_prepared(toy_prepared)
  assert data.titles == ["Alpha (1990)", "Beta, The (1991)", "Gamma (1992)", "Delta (1993)",
                         "Epsilon (1994)"]
  assert json.load(open(os.path.join(toy_prepared, "item_map.json"))) == {
      "1": 0, "2": 1, "3": 2, "4": 3, "5": 4}
  # user 3's single rating is a training target with an empty history (the game rule)
  assert data.rows("train")[0]["history_item_ids"] == []
  assert data.popularity.tolist() == [2, 3, 2, 1, 1]
  assert [len(data.rows(s)) for s in ("train", "valid", "test", "valid_5000", "test_5000")] == [
      5, 1, 1, 1, 1]


def test_directory_without_stats_is_refused(toy_prepared):
  os.remove(os.path.join(toy_prepared, "stats.json"))
  with pytest.raises(UserError, match="interrupted run"):
    prepared.load_prepared(toy_prepared)


def test_build_writes_nothing_and_write_is_complete(tmp_path, toy_dat):
  built = prepare.build("ml-1m", *toy_dat, prepare.PrepareOptions(history_len=2, min_history=2))
  assert not list(tmp_path.glob("out*"))
  assert set(built.rows) == {"train", "valid", "test", "valid_5000", "test_5000"}
  stats = prepare.write(str(tmp_path / "out"), built)
  assert sorted(os.listdir(tmp_path / "out")) == sorted(CONTRACT_FILES)
  assert stats["examples"] == {"train": 4, "valid": 0, "test": 1, "valid_5000": 0, "test_5000": 1}
