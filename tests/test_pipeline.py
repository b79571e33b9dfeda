"""The pipeline end to end on a tiny slice (real SmolLM2 + ML-100K), resume, recommend, --help."""
from __future__ import annotations

import functools
import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_ENV = dict(os.environ)


@pytest.fixture(scope="module", autouse=True)
def _shared_compilation_cache(tmp_path_factory):
  """Every launcher run of this module shares one persistent JAX compilation cache: the stages
  that run again (rerun, the reproduction run, guided generation, recommend) load the programs
  the first run compiled instead of compiling them again."""
  _ENV.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  yield
  _ENV.clear()
  _ENV.update(os.environ)


def _run(*args, timeout=1500):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=_ENV)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pipeline") / "tiny")
  r = _run("launch/pipeline.py", "--config=configs/tiny.py", f"--workdir={workdir}")
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  return workdir, r.stdout


def test_tiny_pipeline_writes_a_complete_report(tiny_run):
  workdir, _ = tiny_run
  for stage in ("prepare", "train", "generate", "baselines", "evaluate", "report"):
    assert os.path.exists(os.path.join(workdir, "stages", f"{stage}.json")), stage
  report = open(os.path.join(workdir, "report.md")).read()
  for method in ("| bigrec |", "| bigrec+pop |", "| bigrec+cf:sasrec |", "| sasrec |",
                 "| mostpop |"):
    assert method in report, method
  assert "## Example recommendations" in report and "grounded:" in report
  assert "## Wall time per stage" in report
  malloc = json.load(open(os.path.join(workdir, "stages", "train.json")))["malloc"]
  assert malloc.startswith(("glibc", "tcmalloc")) and f"malloc: {malloc}" in report
  assert "one quoted title for" in report and "catalog title for" in report
  assert "![training curve](train_curve.png)" in report
  assert os.path.getsize(os.path.join(workdir, "train_curve.png")) > 1000
  metrics = json.load(open(os.path.join(workdir, "eval", "metrics.json")))
  assert metrics["counts"]["test"]["rows"] == 16
  preds = json.load(open(os.path.join(workdir, "predictions", "test.json")))
  assert len(preds) == 16 and all(len(p["predict"]) == 4 for p in preds)
  assert os.path.exists(os.path.join(workdir, "train", "adapter", "adapter_model.safetensors"))
  # Response-only loss: the instruction every prompt opens with ran once per micro-batch.
  summary = json.load(open(os.path.join(workdir, "train", "train_summary.json")))
  assert summary["shared_prefix_tokens"] > 40
  assert not glob.glob(os.path.join(workdir, "**", "*.tmp"), recursive=True)


def test_rerun_skips_completed_stages_and_redoes_missing_ones(tiny_run):
  workdir, _ = tiny_run
  # As if the run had died during evaluation: its marker and outputs are missing.
  os.remove(os.path.join(workdir, "stages", "evaluate.json"))
  os.remove(os.path.join(workdir, "stages", "report.json"))
  os.remove(os.path.join(workdir, "eval", "metrics.json"))
  r = _run("launch/pipeline.py", "--config=configs/tiny.py", f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr[-3000:]
  for stage in ("prepare", "train", "generate", "baselines"):
    assert f"{stage}: done already" in r.stdout
  assert "evaluate: starting" in r.stdout
  assert os.path.exists(os.path.join(workdir, "eval", "metrics.json"))


def test_recommend_from_liked_titles(tiny_run):
  workdir, _ = tiny_run
  r = _run("launch/recommend.py", f"--data_dir={workdir}/data", f"--adapter={workdir}/train",
           "--liked=Toy Story", "--liked=Star Wars", "--liked=Not A Real Movie", "--k=5",
           "--max_new_tokens=8", "--gamma_pop=1")
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.strip().splitlines()
  assert any("Not A Real Movie" in line for line in lines)
  table = lines[lines.index(next(l for l in lines if l.strip().startswith("rank"))) + 1:]
  assert len(table) == 5
  titles = [line.split(None, 2)[2] for line in table]
  assert "Toy Story" not in titles and "Star Wars" not in titles


def _table_row(table: str, name: str) -> list[str]:
  """The cells of the markdown table row whose first cell is `name`."""
  for line in table.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if cells[0] == name:
      return cells
  raise AssertionError(f"no row {name!r} in\n{table}")


def test_ablation_table_compares_runs_on_the_same_rows(tiny_run, tmp_path):
  """Two different runs on the same rows: each row of the table shows that run's own numbers."""
  import collections
  import shutil

  workdir, _ = tiny_run
  # Run b: every best beam is the row's target title, and its BIGRec test metrics are others.
  b = str(tmp_path / "b")
  shutil.copytree(workdir, b)
  titles = [line.split("\t", 1)[1].rstrip("\n")
            for line in open(os.path.join(b, "data", "items.tsv"))]
  rows = json.load(open(os.path.join(b, "predictions", "test.json")))
  for row in rows:
    row["predict"] = [f'"{titles[row["target_item_id"]]}"\n'] + row["predict"][1:]
  json.dump(rows, open(os.path.join(b, "predictions", "test.json"), "w"))
  ev_b = json.load(open(os.path.join(b, "eval", "metrics.json")))
  ev_b["methods"]["bigrec"]["test"].update({"NDCG@10": 0.5, "HR@10": 0.75, "HR@1": 0.25})
  json.dump(ev_b, open(os.path.join(b, "eval", "metrics.json"), "w"))
  out = str(tmp_path / "ablation.md")
  r = _run("launch/ablate.py", f"--run=a={workdir}", f"--run=b={b}", f"--out={out}")
  assert r.returncode == 0, r.stderr[-3000:]
  table = open(out).read()
  assert "Test rows: 16" in table
  head = _table_row(table, "run")
  cell_a, cell_b = dict(zip(head, _table_row(table, "a"))), dict(zip(head, _table_row(table, "b")))
  ours = json.load(open(os.path.join(workdir, "eval", "metrics.json")))["methods"]["bigrec"]["test"]
  assert cell_a["bigrec NDCG@10 / HR@10"] == f"{ours['NDCG@10']:.4f} / {ours['HR@10']:.4f}"
  assert cell_a["bigrec HR@1"] == f"{ours['HR@1']:.4f}"
  assert cell_b["bigrec NDCG@10 / HR@10"] == "0.5000 / 0.7500" and cell_b["bigrec HR@1"] == "0.2500"
  sasrec = json.load(open(os.path.join(workdir, "baselines", "sasrec", "metrics.json")))
  sasrec = sasrec["methods"]["sasrec"]["test"]
  for cells in (cell_a, cell_b):  # the baselines are the same files in both runs
    assert cells["sasrec NDCG@10 / HR@10"] == f"{sasrec['NDCG@10']:.4f} / {sasrec['HR@10']:.4f}"
  # b's generation columns, counted here from its predictions.
  targets = collections.Counter(titles[row["target_item_id"]] for row in rows)
  top, count = targets.most_common(1)[0]
  assert cell_b["single title"] == "100.0%" and cell_b["catalog title"] == "100.0%"
  assert cell_b["distinct titles"] == str(len(targets))
  assert cell_b["top title (share)"] == f"{top} ({100 * count / len(rows):.1f}%)"
  summaries = json.load(open(str(tmp_path / "ablation.json")))
  assert [s["name"] for s in summaries] == ["a", "b"]
  assert summaries[0]["methods"]["bigrec"] == ours
  assert summaries[1]["methods"]["bigrec"]["NDCG@10"] == 0.5
  assert summaries[1]["generation"]["single_title"] == 1.0
  assert summaries[0]["generation"] != summaries[1]["generation"]
  # The pipeline's report shows the compared runs too.
  same = str(tmp_path / "same")
  shutil.copytree(workdir, same)
  r = _run("launch/pipeline.py", "--config=configs/tiny.py", f"--workdir={same}",
           "--stages=report", "--force_stage=report",
           f"--config.pipeline.compare=('first={b}',)")
  assert r.returncode == 0, r.stderr[-3000:]
  report = open(os.path.join(same, "report.md")).read()
  assert "## Compared runs (same test rows)" in report
  compared = report[report.index("## Compared runs"):]
  head = _table_row(compared, "run")
  assert dict(zip(head, _table_row(compared, "this run"))) == {**cell_a, "run": "this run"}
  assert dict(zip(head, _table_row(compared, "first")))["bigrec NDCG@10 / HR@10"] == (
      "0.5000 / 0.7500")
  # Other rows: refused, naming the run, no traceback, nothing written.
  other = str(tmp_path / "other")
  shutil.copytree(workdir, other)
  rows = json.load(open(os.path.join(other, "predictions", "test.json")))
  rows[0]["user_id"] = "someone else"
  json.dump(rows, open(os.path.join(other, "predictions", "test.json"), "w"))
  out2 = str(tmp_path / "refused.md")
  r = _run("launch/ablate.py", f"--run=a={workdir}", f"--run=c={other}", f"--out={out2}")
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert "(c)" in r.stderr and "same rows" in r.stderr
  assert not os.path.exists(out2)


@pytest.mark.parametrize("launcher", sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "launch", "**", "*.py"),
                                                recursive=True)))
def test_every_launcher_answers_help(launcher, launcher_forks):
  """--help lists the launcher's own flags under its own name, with its docstring's first line.
  pipeline.py runs as a plain subprocess, the others in forked children of one warm worker
  (tests/launcher_forks.py: the same output without paying the imports for each)."""
  import ast
  import re

  source = open(os.path.join(ROOT, launcher)).read()
  defined = re.findall(r"flags\.DEFINE_\w+\(\s*[\"'](\w+)[\"']", source)
  assert defined, f"{launcher} defines no flags"
  if launcher == "launch/pipeline.py":
    r = _run(launcher, "--help", timeout=120)
  else:
    r = launcher_forks.run(launcher, "--help")
  assert r.returncode == 0, r.stderr[-2000:]
  out = r.stdout
  assert f"{launcher}:" in out, out[:2000]
  own = out[out.index(f"{launcher}:"):]
  for name in defined:
    assert re.search(rf"^\s+--(\[no\])?{name}:", own, re.M), (name, own[:3000])
  doc = ast.get_docstring(ast.parse(source))
  assert doc and doc.splitlines()[0].strip() in out


@pytest.mark.parametrize("args, needle", [
    (["--config.train.no_such_field=1"], "no_such_field"),
    (["--config=configs/no_such_config.py"], "no_such_config.py"),
    (["--config.generate.num_return_sequences=8"], "num_return_sequences"),
    (["--config.lora.targets=('q_proj','qkv')"], "qkv"),
    (["--config.ground.ks=(10,5)"], "ks"),
    (["--config.model.kernels=triton"], "--config.model.kernels must be one of"),
    (["--config.train.schedule=step"], "--config.train.schedule='step': choose from"),
    (["--config.ground.beams=5"], "--config.ground.beams=5: must be in 1..num_return_sequences"),
    (["--force_stage=bake"], "bake"),
    ([], "--workdir"),
])
def test_pipeline_rejects_bad_config_before_work(tmp_path, args, needle, launcher_forks):
  """The case without --workdir runs as a plain subprocess, the others in forked children."""
  workdir = [] if not args else [f"--workdir={tmp_path}/w"]
  run = launcher_forks.run if args else functools.partial(_run, timeout=120)
  r = run("launch/pipeline.py", "--config=configs/tiny.py", *workdir, *args)
  assert r.returncode == 2, (r.stdout, r.stderr)
  assert needle in r.stderr and "Traceback" not in r.stderr
  assert not os.path.exists(f"{tmp_path}/w/stages")


def test_same_config_and_seed_reproduce_bit_identical_outputs(tiny_run, tmp_path):
  """Prepared data, adapter, predictions and metrics are bit-identical across two runs (CPU)."""
  import hashlib
  import shutil

  first, _ = tiny_run
  second = str(tmp_path / "again")
  # The baselines are deterministic too (tests/baselines); reuse them to keep this test short:
  # copied in first, the other stages (evaluate reading them) run in one command.
  shutil.copytree(os.path.join(first, "baselines"), os.path.join(second, "baselines"))
  os.makedirs(os.path.join(second, "stages"))
  shutil.copy(os.path.join(first, "stages", "baselines.json"), os.path.join(second, "stages"))
  r = _run("launch/pipeline.py", "--config=configs/tiny.py", f"--workdir={second}",
           "--stages=prepare,train,generate,evaluate")
  assert r.returncode == 0, r.stderr[-3000:]
  for stage in ("prepare", "train", "generate", "evaluate"):
    assert f"{stage}: starting" in r.stdout, stage

  def digest(workdir, rel):
    return hashlib.sha256(open(os.path.join(workdir, rel), "rb").read()).hexdigest()

  for rel in ("data/train.json", "data/test_5000.json", "data/items.tsv", "data/popularity.json",
              "train/adapter/adapter_model.safetensors", "predictions/valid.json",
              "predictions/test.json"):
    assert digest(first, rel) == digest(second, rel), rel

  def metrics(workdir):
    m = json.load(open(os.path.join(workdir, "eval", "metrics.json")))
    m.pop("seconds", None)
    m.pop("inputs", None)
    return m

  assert metrics(first) == metrics(second)


def test_run_seeds_keeps_config_seed_unless_seeds_lists_several(monkeypatch, tmp_path):
  """`--config.seed=1` alone runs seed 1 (the default `seeds` is empty, not (0,)); one listed
  seed is that run's seed in the workdir itself; several get a workdir/seed_<s> each."""
  from bigrec_jax import pipeline
  from configs import default

  runs = []
  monkeypatch.setattr(pipeline, "run_pipeline", lambda c, w, log: runs.append((c.seed, w)))
  monkeypatch.setattr(pipeline, "write_seed_report", lambda w, seeds: None)
  c = default.get_config()
  assert tuple(c.seeds) == ()
  c.seed = 1
  pipeline.run_seeds(c, str(tmp_path))
  c = default.get_config()
  c.seeds = (2,)
  pipeline.run_seeds(c, str(tmp_path))
  c = default.get_config()
  c.seeds = (3, 4)
  pipeline.run_seeds(c, str(tmp_path))
  assert runs == [(1, str(tmp_path)), (2, str(tmp_path)), (3, str(tmp_path / "seed_3")),
                  (4, str(tmp_path / "seed_4"))]


def test_multi_seed_report_gives_mean_and_spread(tiny_run, tmp_path):
  """Two seeds with different numbers: the report's mean and (population) std are theirs."""
  import shutil

  from bigrec_jax import pipeline

  first, _ = tiny_run
  for seed in (0, 1):
    shutil.copytree(first, tmp_path / f"seed_{seed}")
  ev_path = tmp_path / "seed_1" / "eval" / "metrics.json"
  ev = json.loads(ev_path.read_text())
  pop0 = ev["methods"]["bigrec+pop"]["test"]["NDCG@10"]
  ev["methods"]["bigrec+pop"]["test"]["NDCG@10"] = pop0 + 0.2
  ev_path.write_text(json.dumps(ev))
  sas_path = tmp_path / "seed_1" / "baselines" / "sasrec" / "metrics.json"
  sas = json.loads(sas_path.read_text())
  hr0 = sas["methods"]["sasrec"]["test"]["HR@10"]
  sas["methods"]["sasrec"]["test"]["HR@10"] = hr0 + 0.1
  sas_path.write_text(json.dumps(sas))
  path = pipeline.write_seed_report(str(tmp_path), [0, 1])
  text = open(path).read()
  summary = json.load(open(tmp_path / "seeds_summary.json"))
  assert summary["bigrec+pop"]["NDCG@10"]["mean"] == pytest.approx(pop0 + 0.1)
  assert summary["bigrec+pop"]["NDCG@10"]["std"] == pytest.approx(0.1)
  assert summary["sasrec"]["HR@10"]["mean"] == pytest.approx(hr0 + 0.05)
  assert summary["sasrec"]["HR@10"]["std"] == pytest.approx(0.05)
  assert summary["sasrec"]["NDCG@10"]["std"] == 0.0  # unchanged across the seeds
  assert summary["bigrec"] == {c: {"mean": v, "std": 0.0}
                               for c, v in ev["methods"]["bigrec"]["test"].items()
                               if c in summary["bigrec"]}
  assert "seeds [0, 1]" in text
  row = _table_row(text, "bigrec+pop")
  head = _table_row(text, "method")
  assert dict(zip(head, row))["NDCG@10"] == f"{pop0 + 0.1:.4f} ± 0.1000"


def test_guided_generation_stage_chooses_alpha_on_valid(tiny_run, tmp_path, launcher_forks):
  """assistant=sasrec: generate reads the baselines' scores, tries the alpha grid on the valid
  rows, records the choice, excludes history titles, and the report says what it chose."""
  import shutil

  from bigrec_jax import pipeline
  from configs import tiny

  workdir, _ = tiny_run
  guided = str(tmp_path / "guided")
  shutil.copytree(workdir, guided)
  args = ["--config.generate.assistant=sasrec", "--config.generate.renormalize=true",
          "--config.generate.exclude_history=shown", "--config.generate.guidance_grid=(0.0,1.0)",
          "--config.generate.length_penalty_grid=(0.0,1.0)"]
  config = tiny.get_config()
  config.generate.assistant = "sasrec"
  assert pipeline.stage_order(config).index("baselines") < pipeline.stage_order(config).index(
      "generate")
  r = _run("launch/pipeline.py", "--config=configs/tiny.py", f"--workdir={guided}",
           "--stages=generate,evaluate,report", "--force_stage=generate",
           "--force_stage=evaluate", "--force_stage=report", *args)
  assert r.returncode == 0, r.stderr[-3000:]
  valid = json.load(open(os.path.join(guided, "stages", "generate.json")))["valid"]
  decoding = valid["decoding"]
  grid = decoding["alpha_grid"]  # each alpha's best valid metric over the length penalties
  assert set(grid) == {"0", "1"} and decoding["alpha_metric"] == "bigrec/NDCG@10"
  assert decoding["guidance"] == max((0.0, 1.0), key=lambda a: (grid[f"{a:g}"], a))
  penalties = valid["length_penalty_grid"]  # and each penalty's best over the alphas
  assert set(penalties) == {"0", "1"} and valid["grid_metric"] == "bigrec/NDCG@10"
  assert penalties[f"{valid['length_penalty']:g}"] == max(grid.values()) == max(penalties.values())
  # the grid's value of the chosen alpha is the grounded valid NDCG@10 the evaluation reports
  ev = json.load(open(os.path.join(guided, "eval", "metrics.json")))
  assert grid[f"{decoding['guidance']:g}"] == pytest.approx(
      ev["methods"]["bigrec"]["valid"]["NDCG@10"], abs=1e-6)
  titles = [line.split("\t", 1)[1].rstrip("\n")
            for line in open(os.path.join(guided, "data", "items.tsv"))]
  for split in ("valid", "test"):
    for row in json.load(open(os.path.join(guided, "predictions", f"{split}.json"))):
      watched = {titles[i] for i in row["history_item_ids"]}
      assert not any(p.strip('"') in watched for p in row["predict"]), row["predict"]
  report = open(os.path.join(guided, "report.md")).read()
  assert "- decoding: renormalize=True, exclude_history=shown, assistant=sasrec" in report
  assert f"- length_penalty {valid['length_penalty']:g}, chosen on the valid rows" in report
  bad = launcher_forks.run("launch/pipeline.py", "--config=configs/tiny.py",
                           f"--workdir={tmp_path / 'x'}", "--config.generate.assistant=caser")
  assert bad.returncode == 2 and "assistant=caser is not trained" in bad.stderr, bad.stderr[-2000:]
  assert not os.path.exists(os.path.join(tmp_path, "x", "stages"))  # refused before any stage
