"""Bad input through the real launchers: exit status 2, one message naming the flag/file/line,
no traceback, nothing left behind, and all of it before anything heavy loads.

One case per launcher runs it as a plain subprocess (`_run`, 1.5 s idle, 2-7 s on a loaded
2-core runner: the checks come before the model or the data are read); the others run it in a
forked child of one warm worker (`launch`: tests/launcher_forks.py, the same exit status,
stdout and stderr, without paying the Python + JAX imports for every case). The data cases use
the real ML-100K prepared directory and small hand-made ML-1M-format files; the recommend cases
the real ML-100K catalog (22 shared titles).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args, timeout=120, cwd=ROOT):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                        timeout=timeout, env=env)


def _refused(r, *needles):
  """Exit 2, no traceback, an `error:` line holding every needle; returns stderr."""
  err = r.stderr
  assert r.returncode == 2, (r.returncode, r.stdout[-2000:], err[-3000:])
  assert "Traceback" not in err, err[-3000:]
  assert "error:" in err, err
  flat = " ".join(err.split())  # messages wrap at 100 columns
  for needle in needles:
    assert needle in flat, (needle, err)
  return flat


@pytest.fixture
def launch(launcher_forks):
  """`python launch/X.py ARGS` as a forked child of the warm worker (tests/conftest.py)."""
  return launcher_forks.run


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
  from bigrec_jax.data import prepare

  out = str(tmp_path_factory.mktemp("ml100k") / "data")
  prepare.prepare("ml-100k", out, options=prepare.PrepareOptions(eval_sample_size=20))
  return out


@pytest.fixture
def a_file(tmp_path):
  path = tmp_path / "a_file"
  path.write_text("x\n")
  return str(path)


def _listing(path):
  return sorted(os.listdir(path))


# ----------------------------------------------------------------------------- output paths


def test_generate_output_is_an_existing_directory(ml100k, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  r = _run("launch/generate.py", f"--input={ml100k}/test_5000.json", f"--output={out}")
  _refused(r, f"--output={out}", "is a directory")
  assert _listing(out) == []


def test_generate_output_below_a_regular_file(ml100k, a_file, launch):
  r = launch("launch/generate.py", f"--input={ml100k}/test_5000.json",
           f"--output={a_file}/sub/predict.json")
  _refused(r, "--output=", f"{a_file} is a regular file")
  assert open(a_file).read() == "x\n"


def test_evaluate_out_dir_is_a_file(ml100k, a_file):
  r = _run("launch/evaluate.py", f"--data_dir={ml100k}",
           f"--valid_predictions={ml100k}/valid_5000.json",
           f"--test_predictions={ml100k}/test_5000.json", f"--out_dir={a_file}")
  _refused(r, f"--out_dir={a_file}", "not a directory")


def test_train_workdir_is_a_file(ml100k, a_file):
  r = _run("launch/train.py", f"--workdir={a_file}", "--config=configs/tiny.py",
           f"--config.data.dir={ml100k}")
  _refused(r, f"--workdir={a_file}", "not a directory")


def test_train_baseline_workdir_below_a_file(ml100k, a_file, tmp_path):
  r = _run("launch/train_baseline.py", "--model=mostpop", f"--data_dir={ml100k}",
           f"--workdir={a_file}/runs/mostpop")
  _refused(r, "--workdir=", "is a regular file")


def test_pipeline_workdir_is_a_file(a_file):
  r = _run("launch/pipeline.py", "--config=configs/tiny.py", f"--workdir={a_file}")
  _refused(r, f"--workdir={a_file}", "not a directory")


def test_prepare_data_out_dir_below_a_file(a_file):
  r = _run("launch/prepare_data.py", f"--out_dir={a_file}/data")
  _refused(r, "--out_dir=", "is a regular file")


def test_output_in_an_unwritable_directory(tmp_path, launch):
  # A user's read-only directory; root ignores permission bits, so as root: /sys, which refuses
  # new files even to root (os.access would say yes to root: the check writes).
  if os.geteuid() != 0:
    unwritable = tmp_path / "read_only"
    unwritable.mkdir()
    unwritable.chmod(0o500)
  elif os.path.isdir("/sys") and not _try_write("/sys"):
    unwritable = "/sys"
  else:  # root on a machine without a /sys that refuses writes (not Linux)
    pytest.skip("running as root with no directory that refuses root's writes")
  r = launch("launch/prepare_data.py", f"--out_dir={unwritable}/bigrec_data")
  _refused(r, f"--out_dir={unwritable}/bigrec_data", f"cannot write in {unwritable}")


def _try_write(directory):
  try:
    path = os.path.join(directory, ".bigrec_probe")
    open(path, "w").close()
    os.remove(path)
    return True
  except OSError:
    return False


def test_bench_out_is_a_directory(tmp_path):
  r = _run("launch/bench.py", "--quick", f"--out={tmp_path}")
  _refused(r, f"--out={tmp_path}", "is a directory")
  assert _listing(tmp_path) == []


def test_ablate_out_would_overwrite_itself(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  r = _run("launch/ablate.py", f"--run=a={run}", f"--out={tmp_path}/table.json")
  _refused(r, "--out=", "give a .md name")


def test_tilde_after_equals_is_not_a_directory_named_tilde(tmp_path, launch):
  r = launch(os.path.join(ROOT, "launch/prepare_data.py"), "--out_dir=~/bigrec_data",
           cwd=str(tmp_path))
  _refused(r, "--out_dir=~/bigrec_data: '~' is not expanded")
  assert _listing(tmp_path) == []


@pytest.mark.parametrize("flags, needle", [
    (["--num_processes=2"], "--num_processes=2 needs --coordinator_address"),
    (["--coordinator_address=10.0.0.1", "--num_processes=2"], "expected host:port"),
    (["--coordinator_address=h:1", "--num_processes=2", "--process_id=2"],
     "--process_id=2: must be in 0..1"),
])
def test_multihost_flags_that_cannot_start(ml100k, tmp_path, flags, needle, launch):
  r = launch("launch/train.py", "--config=configs/tiny.py", f"--config.data.dir={ml100k}",
             f"--workdir={tmp_path}/w", *flags,
             unset=("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"))
  _refused(r, needle)
  assert not os.path.exists(tmp_path / "w")


# ----------------------------------------------------------------------------- config files


@pytest.mark.parametrize("body, needle", [
    ("def get_config(:\n  pass\n", "bad.py:1: syntax error"),
    ("import ml_collections\nX = 1\n", "bad.py: the config file defines no get_config()"),
    ("import ml_collections\n\n\ndef get_config():\n  c = ml_collections.ConfigDict()\n"
     "  raise RuntimeError('half-edited')\n", "bad.py:6: the config file raised RuntimeError: "
     "half-edited"),
], ids=["syntax", "no_get_config", "raises"])
@pytest.mark.parametrize("launcher", ["launch/train.py", "launch/pipeline.py"])
def test_config_file_that_does_not_import(tmp_path, launcher, body, needle, launch):
  bad = tmp_path / "bad.py"
  bad.write_text(body)
  r = launch(launcher, f"--config={bad}", f"--workdir={tmp_path}/w")
  _refused(r, "--config:", needle)
  assert not os.path.exists(tmp_path / "w")


def test_missing_config_file(tmp_path, launch):
  r = launch("launch/train_baseline.py", f"--config={tmp_path}/nope.py", f"--data_dir={tmp_path}",
           f"--workdir={tmp_path}/w")
  _refused(r, "nope.py: no such config file")


def test_unknown_config_field_names_the_dotted_field_and_close_matches(tmp_path, launch):
  r = launch("launch/train.py", "--config=configs/tiny.py", "--config.train.learning_rat=1e-3",
           f"--workdir={tmp_path}/w")
  flat = _refused(r, "--config.train.learning_rat: no such config field",
                  "did you mean --config.train.learning_rate")
  assert "'\\'" not in flat and "\\n" not in flat  # not a Python repr


def test_list_config_field_with_wrong_elements(tmp_path, launch):
  r = launch("launch/pipeline.py", "--config=configs/tiny.py", "--config.seeds=abc",
           f"--workdir={tmp_path}/w")
  _refused(r, "--config.seeds=abc: expected a comma-separated list of integers")
  r = launch("launch/pipeline.py", "--config=configs/tiny.py", "--config.ground.ks=1,x",
           f"--workdir={tmp_path}/w")
  _refused(r, "--config.ground.ks=1,x")
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("override, needle", [
    ("--config.generate.max_new_tokens=0", "--config.generate.max_new_tokens=0: must be >= 1"),
    ("--config.ground.cf_sources=caser", "--config.ground.cf_sources: ['caser'] not in"),
    ("--config.data.dataset=ml100k", "--config.data.dataset='ml100k': choose one of ml-100k"),
    ("--config.data.valid_test_size=0", "--config.data.valid_test_size=0: must be >= 1"),
    ("--config.data.encoding=utf-9", "--config.data.encoding=utf-9: unknown text encoding"),
    ("--config.seeds=0,0", "--config.seeds=0,0: a seed is repeated"),
])
def test_pipeline_config_checked_before_training(tmp_path, override, needle, launch):
  r = launch("launch/pipeline.py", "--config=configs/tiny.py", f"--workdir={tmp_path}/w", override)
  _refused(r, needle)
  assert not os.path.exists(tmp_path / "w")


def test_pipeline_stage_whose_inputs_never_ran(tmp_path, launch):
  r = launch("launch/pipeline.py", "--config=configs/tiny.py", f"--workdir={tmp_path}/w",
           "--stages=evaluate")
  _refused(r, "--stages=evaluate: evaluate reads the output of prepare, generate",
           "add it to --stages")
  assert not os.path.exists(tmp_path / "w")


def test_unquoted_name_list_is_split_into_names(tmp_path, launch):
  # ml_collections keeps `q_proj,vproj` as the one string 'q_proj,vproj'; cli.py splits it, so
  # the message names the one misspelt module.
  r = launch("launch/pipeline.py", "--config=configs/tiny.py", f"--workdir={tmp_path}/w",
           "--config.lora.targets=q_proj,vproj")
  flat = _refused(r, "--config.lora: unknown LoRA target(s) ['vproj']")
  assert "q_proj,vproj" not in flat


def test_lora_alpha_must_be_positive(ml100k, tmp_path, launch):
  r = launch("launch/train.py", "--config=configs/tiny.py", f"--config.data.dir={ml100k}",
           f"--workdir={tmp_path}/w", "--config.lora.alpha=-1")
  _refused(r, "--config.lora", "alpha must be positive")
  assert not os.path.exists(tmp_path / "w")


# ----------------------------------------------------------------------------- unknown names


def test_misspelt_stage_is_refused(tmp_path, launch):
  r = launch("launch/pipeline.py", "--config=configs/tiny.py", f"--workdir={tmp_path}/w",
           "--stages=prepare,evalute")
  _refused(r, "--stages", "'evalute'", "did you mean evaluate")
  assert not os.path.exists(tmp_path / "w")


def test_unknown_encoding(tmp_path, launch):
  ratings, movies = _ml1m_files(tmp_path)
  r = launch("launch/prepare_data.py", "--dataset=ml-1m", f"--interactions={ratings}",
           f"--items={movies}", f"--out_dir={tmp_path}/out", "--encoding=utf-9")
  _refused(r, "--encoding=utf-9", "unknown text encoding")
  assert not os.path.exists(tmp_path / "out")


def test_generate_constrained_without_items(ml100k, tmp_path, launch):
  r = launch("launch/generate.py", f"--input={ml100k}/test_5000.json",
           f"--output={tmp_path}/p.json", "--constrained")
  _refused(r, "--constrained needs --items")


def test_generate_constrained_without_items_in_the_library(ml100k, tmp_path):
  from bigrec_jax.files import UserError
  from bigrec_jax.generate import runner

  with pytest.raises(UserError, match="--constrained needs --items"):
    runner.run(f"{ml100k}/test_5000.json", str(tmp_path / "p.json"),
               runner.GenerateOptions(constrained=True))


# ----------------------------------------------------------------------------- flags named


@pytest.mark.parametrize("flag, needle", [
    ("--valid_test_size=0", "--valid_test_size=0: must be >= 1"),
    ("--train_fraction=0.95", "--train_fraction=0.95 --valid_fraction=0.1"),
    ("--history_len=0", "--history_len=0: must be >= 1"),
    ("--domain=movies", "--domain: unknown name 'movies'; did you mean movie"),
    ("--target_rating_above=high", "--target_rating_above"),
])
def test_prepare_data_messages_name_their_flag(tmp_path, flag, needle, launch):
  r = launch("launch/prepare_data.py", f"--out_dir={tmp_path}/out", flag)
  _refused(r, needle)
  assert not os.path.exists(tmp_path / "out")


def test_library_messages_name_the_flags():
  from bigrec_jax.data import prepare, sequences
  from bigrec_jax.files import UserError

  with pytest.raises(UserError, match="--valid_test_size"):
    prepare.build("ml-100k", options=prepare.PrepareOptions(eval_sample_size=0))
  with pytest.raises(UserError, match="--train_fraction=0.9 --valid_fraction=0.2"):
    sequences.SequenceRules(train_fraction=0.9, valid_fraction=0.2).check()


@pytest.mark.parametrize("flag, needle", [
    ("--num_beams=0", "--num_beams=0: must be >= 1"),
    ("--num_return_sequences=8", "--num_return_sequences=8 cannot exceed --num_beams=4"),
    ("--adapter=/no/such/adapter", "--adapter=/no/such/adapter: no such file or directory"),
])
def test_generate_numbers_and_paths_before_the_model(ml100k, tmp_path, flag, needle, launch):
  r = launch("launch/generate.py", f"--input={ml100k}/test_5000.json",
           f"--output={tmp_path}/p.json", flag)
  _refused(r, needle)


def test_recommend_names_the_bad_number(ml100k):
  r = _run("launch/recommend.py", f"--data_dir={ml100k}", "--liked=Toy Story", "--gamma_pop=-1")
  _refused(r, "--gamma_pop=-1.0: must be >= 0")


# ----------------------------------------------------------------------------- damaged data


def _ml1m_files(tmp_path, ratings_text=None, movies_bytes=None):
  """A small ML-1M-format pair: 3 users x 12 ratings over 14 movies (enough for examples)."""
  movies = tmp_path / "movies.dat"
  movies.write_bytes(movies_bytes or "".join(
      f"{i}::Movie {i} (1995)::Drama\n" for i in range(1, 15)).encode("latin-1"))
  lines = [f"{u}::{m}::{1 + (u + m) % 5}::{978300000 + 100 * m + u}"
           for u in (1, 2, 3) for m in range(1, 13)]
  ratings = tmp_path / "ratings.dat"
  ratings.write_text(ratings_text if ratings_text is not None else "\n".join(lines) + "\n")
  return str(ratings), str(movies)


def test_ratings_file_cut_inside_its_last_record(tmp_path, launch):
  ratings, movies = _ml1m_files(tmp_path)
  text = open(ratings).read()
  cut = text[: len(text) - 4]  # '...::9783011' : the timestamp lost its last digits
  open(ratings, "w").write(cut)
  r = launch("launch/prepare_data.py", "--dataset=ml-1m", f"--interactions={ratings}",
           f"--items={movies}", f"--out_dir={tmp_path}/out")
  _refused(r, f"{ratings}:36:", "no line break", "cut short")
  assert not os.path.exists(tmp_path / "out")


def test_utf8_titles_read_as_latin1_warn_with_the_encoding_to_pass(tmp_path, launch):
  titles = ["Misérables, Les (1995)", "Amélie (2001)"] + [f"Movie {i} (1995)" for i in range(3, 15)]
  movies = "".join(f"{i}::{t}::Drama\n" for i, t in enumerate(titles, 1)).encode("utf-8")
  ratings, movies_path = _ml1m_files(tmp_path, movies_bytes=movies)
  common = ["launch/prepare_data.py", "--dataset=ml-1m", f"--interactions={ratings}",
            f"--items={movies_path}", "--min_history=2", "--valid_test_size=5"]
  r = launch(*common, f"--out_dir={tmp_path}/latin")
  assert r.returncode == 0, r.stderr[-3000:]
  flat = " ".join(r.stderr.split())
  assert movies_path in flat and "look like UTF-8 read as ISO-8859-1" in flat, r.stderr
  assert "--encoding=utf-8" in flat and "MisÃ©rables" in flat
  r = launch(*common, f"--out_dir={tmp_path}/utf8", "--encoding=utf-8")
  assert r.returncode == 0 and "look like UTF-8" not in r.stderr, r.stderr[-3000:]
  items = open(tmp_path / "utf8" / "items.tsv", encoding="utf-8").read()
  assert "Misérables" in items and "Amélie" in items


def test_real_latin1_titles_do_not_warn(tmp_path, launch):
  titles = ["Misérables, Les (1995)"] + [f"Movie {i} (1995)" for i in range(2, 15)]
  movies = "".join(f"{i}::{t}::Drama\n" for i, t in enumerate(titles, 1)).encode("latin-1")
  ratings, movies_path = _ml1m_files(tmp_path, movies_bytes=movies)
  r = launch("launch/prepare_data.py", "--dataset=ml-1m", f"--interactions={ratings}",
           f"--items={movies_path}", "--min_history=2", "--valid_test_size=5",
           f"--out_dir={tmp_path}/out")
  assert r.returncode == 0 and "look like UTF-8" not in r.stderr, r.stderr[-3000:]
  assert "Misérables" in open(tmp_path / "out" / "items.tsv", encoding="utf-8").read()


# ----------------------------------------------------------------------------- half-made state


def test_train_baseline_bad_config_leaves_no_workdir(ml100k, tmp_path, launch):
  workdir = tmp_path / "sasrec"
  r = launch("launch/train_baseline.py", "--model=sasrec", f"--data_dir={ml100k}",
           f"--workdir={workdir}", "--config.train.max_epochs=0")
  _refused(r, "max_epochs must be >= 1")
  assert not os.path.exists(workdir)


# ----------------------------------------------------------------------------- recommend


def test_recommend_excludes_every_id_of_a_shared_liked_title(ml100k):
  from bigrec_jax.data import prepared
  from bigrec_jax.recommend import distinct_titles, liked_item_ids

  titles = prepared.read_items(ml100k)
  lower = [t.lower() for t in titles]
  shared = next(t for t in titles if lower.count(t.lower()) > 1)
  ids_of_shared = [i for i, t in enumerate(lower) if t == shared.lower()]
  ids, unknown = liked_item_ids([shared, "Not A Real Movie"], titles)
  assert ids == ids_of_shared and unknown == ["Not A Real Movie"]
  # A ranking that puts every id of the liked title and every id of another shared title first.
  other = next(t for t in titles if lower.count(t.lower()) > 1 and t.lower() != shared.lower())
  ids_of_other = [i for i, t in enumerate(lower) if t == other.lower()]
  rest = [i for i in range(len(titles)) if i not in ids_of_shared + ids_of_other]
  ranking = ids_of_shared + ids_of_other + rest
  chosen = distinct_titles(ranking, range(len(ranking)), titles, ids, k=5)
  shown = [t.lower() for _, t, _ in chosen]
  assert shared.lower() not in shown
  assert len(shown) == len(set(shown)) == 5
  assert chosen[0][0] == ids_of_other[0]  # the best-ranked id of a shared title stands for it


@pytest.mark.slow
def test_recommend_with_the_real_model_shows_each_title_once(ml100k, smollm2):
  """The real SmolLM2 (no adapter) through recommend(): a shared liked title is left out."""
  from bigrec_jax import assets
  from bigrec_jax.data import prepared
  from bigrec_jax.recommend import recommend

  titles = prepared.read_items(ml100k)
  lower = [t.lower() for t in titles]
  shared = [t for t in dict.fromkeys(titles) if lower.count(t.lower()) > 1]
  rec = recommend(shared[:3], ml100k, None, model_path=assets.smollm2_gguf(), k=20,
                  num_beams=2, max_new_tokens=6)
  shown = [t.lower() for _, t, _ in rec.items]
  assert len(shown) == 20 and len(set(shown)) == 20
  assert not {t.lower() for t in shared[:3]} & set(shown)
