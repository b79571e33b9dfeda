"""BIGRec end to end: prepare -> train LoRA -> generate -> baselines -> ground/evaluate -> report.

Each stage writes its outputs under the workdir and, last, a marker `stages/<name>.json` (its
summary, wall time and `made_with`: the config fields it read, `_READS`, and the markers of the
stages it read). A stage whose marker exists is skipped, so a crashed run resumes where it
stopped. Before any work, `_plan` compares every marker with this run: a stage made with other
values of its fields is an error naming them and the `--force_stage` that redoes it (the cheap
report is just redone); a forced stage, and one whose inputs are (re)done, is redone from
scratch, so forcing a stage redoes the stages that read it. Every stage also has its own launcher.

Layout of a workdir:
  data/                 prepared data (items.tsv, train/valid_5000/test_5000.json, ...)
  train/                checkpoints, tensorboard, adapter/ (PEFT format; model/, an HF
                        checkpoint, with train.mode=full)
  predictions/          valid.json, test.json (rows + `predict`)
  baselines/<model>/    metrics.json, scores_valid_5000.npy, scores_test_5000.npy
  eval/                 metrics.json, plots, test_top_items.json
  report.md             the results report
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
import uuid
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from bigrec_jax import config as config_lib, files, host, parallel
from bigrec_jax.data import prepared, sequences
from bigrec_jax.evaluate import compare
from bigrec_jax.files import UserError

STAGES = ("prepare", "train", "generate", "baselines", "evaluate", "report")


@dataclasses.dataclass
class Paths:
  workdir: str

  def __getattr__(self, name):  # data, train, predictions, baselines, eval, stages
    if name.startswith("_"):
      raise AttributeError(name)
    return os.path.join(self.workdir, name)

  def marker(self, stage: str) -> str:
    return os.path.join(self.workdir, "stages", f"{stage}.json")

  def predictions_file(self, split: str) -> str:
    return os.path.join(self.workdir, "predictions", f"{split}.json")

  def baseline_dir(self, model: str, few_shot: bool = False) -> str:
    return os.path.join(self.workdir, "baselines", model + ("_fewshot" if few_shot else ""))

  @property
  def report(self) -> str:
    return os.path.join(self.workdir, "report.md")


def check_config(config: ml_collections.ConfigDict) -> None:
  """`config.check`, the one checker (exit 2 via UserError) before any heavy work."""
  config_lib.check(config)


def stage_order(config) -> tuple[str, ...]:
  """STAGES, with baselines before generate when the search is guided by one of them."""
  from bigrec_jax.generate import runner

  g = config.generate
  cf_metric = config_lib.searched(g) and "+cf:" in g.guidance_metric  # chosen with CF grounding
  if g.assistant not in runner.CF_ASSISTANTS and not cf_metric:
    return STAGES
  return ("prepare", "train", "baselines", "generate", "evaluate", "report")


def run_stage(paths: Paths, name: str, fn: Callable[[], dict], redo: str | None,
              log: Callable[[str], None], record: dict | None = None) -> dict:
  """Runs a stage unless its marker exists and `redo` (why it runs again) is None.

  `record` (what the stage was made with: `made_with`) goes into the marker with its summary.
  """
  marker = paths.marker(name)
  if files.exists(marker) and redo is None:
    log(f"[pipeline] {name}: done already ({marker}); skipping")
    return files.read_json(marker)
  files.remove(marker)
  log(f"[pipeline] {name}: starting" + (f" again ({redo})" if redo else ""))
  start = time.time()
  summary = fn() or {}
  summary = {**summary, "seconds": round(time.time() - start, 2),
             "malloc": host.describe_malloc()}  # stage times depend on it (bigrec_jax/host.py)
  if record is not None:
    summary["made_with"] = {**record, "token": uuid.uuid4().hex}
  files.write_json(marker, summary)  # written last: the stage is complete
  log(f"[pipeline] {name}: done in {summary['seconds']:.1f} s")
  return summary


def prepare_stage(config, paths: Paths) -> dict:
  from bigrec_jax.data import prepare as prepare_lib

  d = config.data
  stats = prepare_lib.prepare(d.dataset, paths.data, d.interactions_file or None,
                              d.items_file or None, config_lib.prepare_options(config))
  return {"stats": stats}


def train_stage(config, paths: Paths, fresh: bool = False) -> dict:
  """`fresh`: a redo, so the checkpoints of the earlier run are not resumed."""
  from bigrec_jax.train import checkpoint, loop

  if fresh:
    files.rmtree(os.path.join(paths.train, "checkpoints"))
  train_config = copy.deepcopy(config)  # still locked
  train_config.data.dir = paths.data
  try:
    return loop.train(train_config, paths.train) or {}
  except checkpoint.ConfigMismatch as e:
    raise UserError(f"{e}; --force_stage=train trains afresh in this workdir") from None


def generate_stage(config, paths: Paths) -> dict:
  from bigrec_jax.data import prompts
  from bigrec_jax.generate import runner

  g = config.generate
  options = config_lib.options(runner.GenerateOptions, g,
                               prompt_format=prompts.format_of(config.data))
  splits = ("valid", "test")
  guided = dict(assistant_scores=None, alpha_grid=(), length_penalty_grid=(), grid_metric=None)
  if options.assistant in runner.CF_ASSISTANTS:
    guided["assistant_scores"] = [
        os.path.join(paths.baseline_dir(options.assistant), f"scores_{split}_5000.npy")
        for split in splits]
  if config_lib.searched(g):
    guided.update(alpha_grid=tuple(g.guidance_grid),
                  length_penalty_grid=tuple(g.length_penalty_grid),
                  grid_metric=_grid_metric(config, paths))
  summaries = runner.run_files(
      [(os.path.join(paths.data, f"{split}_5000.json"), paths.predictions_file(split))
       for split in splits], options, model_path=config.model.path or None,
      adapter=paths.train, items=os.path.join(paths.data, "items.tsv"),  # adapter/ or model/
      dtype=config.model.dtype, mesh_shape=tuple(config.mesh.shape),
      matmul_dtype=config.model.matmul_dtype, kernels=config.model.kernels,
      tokenizer=config.model.tokenizer or None, **guided)
  if config_lib.searched(g):
    for summary in summaries:
      summary["grid_metric"] = g.guidance_metric
      if "decoding" in summary:
        summary["decoding"]["alpha_metric"] = g.guidance_metric
  return dict(zip(splits, summaries))


def baselines_stage(config, paths: Paths, log, fresh: bool = False) -> dict:
  from bigrec_jax.baselines import run as baseline_run

  out = []
  b = config.baselines
  runs = [(m, False) for m in b.models]
  if b.few_shot:
    runs += [(m, True) for m in b.models if m != "mostpop"]
  for model, few_shot in runs:
    workdir = paths.baseline_dir(model, few_shot)
    if fresh:  # a redo: nothing of the earlier run is kept
      files.remove(os.path.join(workdir, "metrics.json"))
    elif files.exists(os.path.join(workdir, "metrics.json")):
      continue  # finished in an earlier, interrupted run of this stage
    baseline_run.train_and_evaluate(
        b.to_dict(), model=model, data_dir=paths.data, workdir=workdir,
        sample=config.data.sample if few_shot else -1, seed=config.seed, log=log)
    out.append(os.path.basename(workdir))
  return {"runs": out}


def _grid_metric(config, paths: Paths) -> Callable[[list[dict]], float]:
  """Generated valid rows -> `generate.guidance_metric` ("method/metric") after grounding them as
  the evaluate stage does (gammas tuned on the same valid rows): alpha is chosen like gamma."""
  from bigrec_jax.evaluate import run as evaluate_run

  method, metric = config.generate.guidance_metric.split("/")
  return evaluate_run.valid_scorer(_evaluate_options(config, paths), method, metric,
                                   log=lambda m: None)


def _evaluate_options(config, paths: Paths):
  from bigrec_jax.evaluate.run import EvaluateOptions

  cf = [m for m in config.ground.cf_sources if m in config.baselines.models]
  return config_lib.options(
      EvaluateOptions, config.ground,
      data_dir=paths.data, valid_predictions=paths.predictions_file("valid"),
      test_predictions=paths.predictions_file("test"), out_dir=paths.eval,
      model=config.model.path or None, tokenizer=config.model.tokenizer or None,
      cf_names=cf,
      cf_valid_scores=[os.path.join(paths.baseline_dir(m), "scores_valid_5000.npy") for m in cf],
      cf_test_scores=[os.path.join(paths.baseline_dir(m), "scores_test_5000.npy") for m in cf],
      beam=0, mesh_shape=tuple(config.mesh.shape), dtype=config.model.dtype,
      kernels=config.model.kernels)


def evaluate_stage(config, paths: Paths, log) -> dict:
  from bigrec_jax.evaluate.run import evaluate_predictions

  metrics = evaluate_predictions(_evaluate_options(config, paths), log=log)
  return {"methods": list(metrics["methods"])}


# What a stage reads from earlier ones (a subset of its inputs, enough to refuse --stages that
# would start work only to fail on a missing file).
_NEEDS = {"train": ("prepare",), "generate": ("prepare", "train"), "baselines": ("prepare",),
          "evaluate": ("prepare", "generate"), "report": ("evaluate",)}


# What each stage reads from the config (a section: all its fields, less _NOT_READ). Its
# marker records these values and the tokens of the markers of the stages it reads, so a
# stage made with other values, or from outputs redone since, is not silently reused.
_READS = {
    "prepare": ("seed", "data.dataset", "data.interactions_file", "data.items_file",
                "data.encoding", "data.history_len", "data.target_rating_above",
                "data.drop_empty_history", "data.valid_test_size", "data.valid_size",
                "data.sample", "data.min_history", "data.train_fraction", "data.valid_fraction",
                "data.valid_test_seed", "data.title_articles", "data.append_year",
                "data.domain"),
    "train": ("seed", "model", "lora", "train", "data.extra_train_dirs", "data.sample",
              "data.cutoff_len", "data.train_on_inputs", "data.group_by_length",
              "data.bucket_multiple", "data.valid_split", "data.valid_sample",
              "data.prompt_template"),
    "generate": ("model", "generate", "data.prompt_template"),
    "baselines": ("seed", "baselines", "data.sample"),
    "evaluate": ("model", "ground"),
    "report": ("pipeline.compare",),
}
# Fields that change how a stage runs (speed, memory, bookkeeping), not what it makes.
_NOT_READ = {"model.remat", "train.resume", "train.log_every_steps", "train.keep_checkpoints",
             "train.checkpoint_every_steps"}
_CHEAP = {"report"}  # redone automatically (and said so) when its fields change


def _stage_config(config, name: str) -> dict[str, Any]:
  """{dotted field: JSON value} of what `name` reads."""
  flat = {}

  def walk(prefix, value):
    if isinstance(value, dict):
      for k, v in value.items():
        walk(f"{prefix}.{k}", v)
    elif prefix not in _NOT_READ:
      flat[prefix] = json.loads(json.dumps(value))

  whole = config.to_dict()
  # An alpha grid is chosen on grounded valid rows: generation then reads the grounding fields.
  extra = ("ground",) if name == "generate" and config_lib.searched(config.generate) else ()
  for field in _READS[name] + extra:
    node = whole
    for part in field.split("."):
      node = node.get(part) if isinstance(node, dict) else None
    if node is not None:
      walk(field, node)
  return flat


def _stage_inputs(config, name: str) -> tuple[str, ...]:
  """The stages whose outputs `name` reads (the markers its own records)."""
  cf = [m for m in config.ground.cf_sources if m in config.baselines.models]
  order = stage_order(config)  # baselines run first when generation reads them
  reads_baselines = {"generate": order.index("baselines") < order.index("generate"),
                     "evaluate": bool(cf), "report": True}
  return _NEEDS.get(name, ()) + (("baselines",) if reads_baselines.get(name) else ())


def _token(paths: Paths, stage: str) -> str | None:
  marker = paths.marker(stage)
  if not files.exists(marker):
    return None
  return (files.read_json(marker).get("made_with") or {}).get("token")


def _show(value) -> str:
  return "(" + ",".join(map(str, value)) + ")" if isinstance(value, list) else repr(value)


def _plan(config, paths: Paths, force: set[str], only: set[str]) -> dict[str, str | None]:
  """{stage: None (skipped), "" (runs: no marker) or why it is redone}, before any work.

  A completed stage is redone when forced, when a stage it reads is (re)done, when such a stage
  was redone since it ran, or (cheap stages only) when its own fields changed; a completed
  stage made with other values of its own fields is a UserError naming them and the
  --force_stage that redoes it. Markers written before stages recorded their config pass.
  """
  plan: dict[str, str | None] = {}
  order = [s for s in stage_order(config) if s in only]
  for name in order:
    marker = paths.marker(name)
    if not files.exists(marker):  # runs (first time, or after a crash: it resumes)
      plan[name] = ""
      continue
    if name in force:
      plan[name] = "--force_stage"
      continue
    record = files.read_json(marker).get("made_with")
    redone = [s for s in _stage_inputs(config, name) if plan.get(s) is not None
              or (record is not None and s in record["inputs"]
                  and record["inputs"][s] != _token(paths, s))]
    if redone:
      plan[name] = f"it reads {', '.join(redone)}, (re)done after it"
      continue
    if record is None:
      plan[name] = None
      continue
    now = _stage_config(config, name)
    changed = [k for k in sorted(now) if k in record["config"] and record["config"][k] != now[k]]
    if not changed:
      plan[name] = None
      continue
    diff = ", ".join(f"{k}: {_show(record['config'][k])} -> {_show(now[k])}" for k in changed)
    if name in _CHEAP:
      plan[name] = f"made with other values: {diff}"
      continue
    after = {name}
    for later in order[order.index(name) + 1:]:
      if after & set(_stage_inputs(config, later)):
        after.add(later)
    after = [s for s in order if s in after and s != name]
    raise UserError(
        f"stage {name} in {paths.workdir} was made with another config: {diff}. "
        f"--force_stage={name} redoes it (and what reads it: {', '.join(after) or 'nothing'}); "
        "or rerun with the values it was made with, or use a new --workdir")
  return plan


def _check_stage_inputs(config: ml_collections.ConfigDict, paths: Paths) -> None:
  only = set(config.pipeline.stages) if config.pipeline.stages else set(STAGES)
  for name in STAGES:
    if name not in only:
      continue
    missing = [s for s in _NEEDS.get(name, ()) if s not in only
               and not files.exists(paths.marker(s))]
    if missing:
      raise UserError(f"--stages={','.join(config.pipeline.stages)}: {name} reads the output of "
                      f"{', '.join(missing)}, not run yet in {paths.workdir} (no "
                      f"stages/{missing[0]}.json); add it to --stages")


def run_pipeline(config: ml_collections.ConfigDict, workdir: str,
                 log: Callable[[str], None] = print) -> dict:
  """Runs (or resumes) every stage; returns {stage: summary}."""
  files.check_filesystem(workdir, "--workdir")
  check_config(config)
  paths = Paths(workdir)
  _check_stage_inputs(config, paths)
  files.makedirs(workdir)
  force = set(config.pipeline.force_stages)
  if "all" in force:
    force = set(STAGES)
  only = set(config.pipeline.stages) if config.pipeline.stages else set(STAGES)
  plan = _plan(config, paths, force, only)
  fresh = lambda name: bool(plan[name]) or name in force  # a redo: earlier partial work goes
  stages: dict[str, Callable[[], dict]] = {
      "prepare": lambda: prepare_stage(config, paths),
      "train": lambda: train_stage(config, paths, fresh("train")),
      "generate": lambda: generate_stage(config, paths),
      "baselines": lambda: baselines_stage(config, paths, log, fresh("baselines")),
      "evaluate": lambda: evaluate_stage(config, paths, log),
      "report": lambda: {"report": write_report(config, paths)},
  }
  summaries = {}
  with parallel.logical_rules(config.mesh.rules):
    for name in plan:
      record = {"config": _stage_config(config, name),
                "inputs": {s: _token(paths, s) for s in _stage_inputs(config, name)}}
      record["hash"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
      summaries[name] = run_stage(paths, name, stages[name], plan[name], log, record)
  if "report" in summaries:
    log(f"[pipeline] report: {paths.report}")
  return summaries


# ----------------------------------------------------------------------------- report

def _table(rows: list[tuple[str, dict]], ks: Sequence[int]) -> list[str]:
  cols = [f"NDCG@{k}" for k in ks] + [f"HR@{k}" for k in ks]
  out = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for name, m in rows:
    out.append(f"| {name} | " + " | ".join(f"{m.get(c, float('nan')):.4f}" for c in cols) + " |")
  return out


def results_rows(paths: Paths) -> tuple[list[tuple[str, dict]], dict]:
  """(method, test metrics) for BIGRec variants and every baseline found in the workdir."""
  ev = files.read_json(os.path.join(paths.eval, "metrics.json"))
  return list(compare.test_metrics(paths.workdir, ev).items()), ev


def prompt_format_line(stats: dict, generate_marker: dict | None) -> str:
  """The report's prompt format: what generation used (else what stats.json records)."""
  prepared_with = stats.get("prompt_format")
  used = ((generate_marker or {}).get("valid") or {}).get("prompt_format") or prepared_with
  if not used:
    return ""
  line = (f"Prompt format: `{used['template']}` template, {used['domain']} wording, answer "
          f"`{used['answer']}`")
  if prepared_with and prepared_with["template"] != used["template"]:
    line += (f" (the data was prepared under `{prepared_with['template']}`, data/stats.json; "
             "prompts are rendered from the rows' item ids when tokenized)")
  return line + "."


def write_report(config, paths: Paths) -> str:
  rows, ev = results_rows(paths)
  ks = ev["ks"]
  stats = files.read_json(os.path.join(paths.data, "stats.json"))
  ex = stats.get("examples", {})
  lines = [f"# BIGRec report: {os.path.basename(files.abspath(paths.workdir).rstrip('/'))}", "",
           "## Data", "",
           f"{stats.get('dataset')}: {stats.get('users')} users, {stats.get('items')} items, "
           f"{stats.get('interactions')} interactions; examples train/valid/test "
           f"{ex.get('train')}/{ex.get('valid')}/{ex.get('test')}; evaluated on "
           f"{ex.get('valid_5000')} valid and {ex.get('test_5000')} test rows; LLM trained on "
           f"{config.data.sample if config.data.sample > 0 else 'all'} examples "
           f"(seed {config.seed}). Full statistics: `data/stats.json`.", "",
           f"Data rule: {sequences.describe_rules(stats['rules'])}." if "rules" in stats else "",
           "", prompt_format_line(stats, _maybe_json(paths.marker("generate"))), "",
           f"## Test results (all-rank over {ev['num_items']} items, "
           f"{ev['counts']['test']['rows']} rows, "
           f"{ev['counts']['test']['empty_predictions']} empty predictions)", ""]
  lines += _table(rows, ks)
  paired = compare.paired_comparisons(paths.workdir)
  if paired:
    lines += ["", f"## Paired comparisons (the same {paired[0]['rows']} test rows; paired "
              f"bootstrap, {paired[0]['resamples']} resamples)", "", compare.paired_table(paired)]
  lines += ["", "## Gammas chosen on validation (pop / cf)", ""]
  for name, m in ev["methods"].items():
    if "gammas" in m:
      chosen = ", ".join(f"{metric}: {g['pop']:g}/{g['cf']:g}" for metric, g in m["gammas"].items()
                         if metric.endswith("@10") or metric.endswith("@1"))
      lines.append(f"- {name}: {chosen}")
  lines += ["", "## Generation", ""]
  gen = _maybe_json(paths.marker("generate"))
  if gen:
    titles = prepared.read_items(paths.data)
    for split in ("valid", "test"):
      s = gen.get(split, {})
      if s:
        st = compare.prediction_stats(files.read_json(paths.predictions_file(split)), titles)
        lines.append(f"- {split}: {s.get('rows')} rows in {s.get('seconds')} s; the best beam is "
                     f"one quoted title for {100 * st['single_title']:.1f}% and a catalog "
                     f"title for {100 * st['catalog_title']:.1f}%; {st['distinct_titles']} "
                     f"distinct, the most frequent ({st['top_title']}) is "
                     f"{100 * st['top_share']:.1f}% of rows; "
                     f"{100 * st['history_repeat']:.1f}% repeat a title of the row's history")
    decoding = gen.get("valid", {}).get("decoding")
    if decoding:
      grid = decoding.get("alpha_grid")
      chosen = (f"; alpha chosen on the valid rows' grounded {decoding.get('alpha_metric')}: "
                + ", ".join(f"{a}: {m:.4f}" for a, m in grid.items())) if grid else ""
      lines.append(f"- decoding: renormalize={decoding['renormalize']}, exclude_history="
                   f"{decoding['exclude_history']}, assistant={decoding['assistant']} "
                   f"(alpha {decoding['guidance']:g}, temperature "
                   f"{decoding['assistant_temperature']:g}){chosen}")
    lp_grid = gen.get("valid", {}).get("length_penalty_grid")
    if lp_grid:
      lines.append(f"- length_penalty {gen['valid']['length_penalty']:g}, chosen on the valid "
                   f"rows' grounded {gen['valid'].get('grid_metric')}: "
                   + ", ".join(f"{lp}: {m:.4f}" for lp, m in lp_grid.items()))
  train = _maybe_json(os.path.join(paths.train, "train_summary.json")) or _maybe_json(
      paths.marker("train"))
  if train:
    lines += ["", "## Training", ""]
    if plot_training_curve(paths):
      lines += ["![training curve](train_curve.png)", ""]
    lines += ["```", _json_block(train), "```"]
  lines += ["", "## Example recommendations (test)", ""]
  lines += _examples(paths)
  lines += ["", "## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
  mallocs = []
  for stage in STAGES[:-1]:
    m = _maybe_json(paths.marker(stage))
    if m:
      lines.append(f"| {stage} | {m['seconds']:.1f} |")
      if m.get("malloc") and m["malloc"] not in mallocs:
        mallocs.append(m["malloc"])
  if mallocs:
    lines += ["", f"malloc: {'; '.join(mallocs)}"]
  if config.pipeline.compare:
    runs = [("this run", paths.workdir)] + [
        compare.parse_run(spec, "--config.pipeline.compare") for spec in config.pipeline.compare]
    table, _ = compare.ablation_table(runs)
    lines += ["", "## Compared runs (same test rows)", "", table]
  lines += ["", "Plots: `eval/gamma_curves.png`, `eval/popularity.png`.", ""]
  text = "\n".join(lines)
  files.atomic_write(paths.report, text)
  return paths.report


def read_scalars(tb_dir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value)]} from the TensorBoard event files the trainer wrote (no TF needed)."""
  import struct

  from tensorboardX.proto import event_pb2

  out: dict[str, dict[int, float]] = {}
  for path in files.glob(tb_dir, "events.out.tfevents.*") if files.isdir(tb_dir) else ():
    data = files.read_bytes(path)
    i = 0
    while i + 12 <= len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
      (length,) = struct.unpack("<Q", data[i:i + 8])
      payload = data[i + 12:i + 12 + length]
      i += 12 + length + 4
      if len(payload) < length:
        break  # a record cut short by a crash
      event = event_pb2.Event()
      event.ParseFromString(payload)
      for v in event.summary.value:
        out.setdefault(v.tag, {})[int(event.step)] = float(v.simple_value)  # resumes overwrite
  return {tag: sorted(points.items()) for tag, points in out.items()}


def plot_training_curve(paths: Paths) -> bool:
  """train_curve.png: training loss per step and validation loss per evaluation."""
  scalars = read_scalars(os.path.join(paths.train, "tb"))
  if "train/loss" not in scalars:
    return False
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 3.5))
  for tag, style in (("train/loss", "-"), ("eval/loss", "o-")):
    if tag in scalars:
      steps, values = zip(*scalars[tag])
      ax.plot(steps, values, style, label=tag)
  ax.set_xlabel("optimizer step")
  ax.set_ylabel("token cross-entropy")
  ax.legend()
  fig.tight_layout()
  with files.atomic_path(os.path.join(paths.workdir, "train_curve.png")) as tmp:
    fig.savefig(tmp, format="png", dpi=100)
  plt.close(fig)
  return True


def _examples(paths: Paths, n: int = 5) -> list[str]:
  top = _maybe_json(os.path.join(paths.eval, "test_top_items.json"))
  if not top:
    return ["(none)"]
  titles = prepared.read_items(paths.data)
  rows = files.read_json(os.path.join(paths.data, "test_5000.json"))
  out = []
  for r, t in list(zip(rows, top))[:n]:
    hist = ", ".join(titles[i] for i in r["history_item_ids"])
    grounded = titles[t["bigrec"][0]] if t.get("bigrec") else "(empty)"
    out.append(f"- history: {hist}\n  - generated: `{t['predict']}` -> grounded: **{grounded}**;"
               f" true next item: **{t['target']}**")
  return out


def _maybe_json(path: str):
  return files.read_json(path) if files.exists(path) else None


def _json_block(obj: Any) -> str:
  import json

  return json.dumps(obj, indent=1, ensure_ascii=False)[:3000]


# ----------------------------------------------------------------------------- seeds

def run_seeds(config: ml_collections.ConfigDict, workdir: str,
              log: Callable[[str], None] = print) -> dict:
  """One run for `config.seed` (`seeds` empty or one seed, which then is the run's seed), or one
  per entry of `config.seeds` under workdir/seed_<s> plus a mean/spread report."""
  if len(config.seeds) <= 1:
    if len(config.seeds) == 1:
      config.seed = int(config.seeds[0])
    return run_pipeline(config, workdir, log)
  seeds = list(config.seeds)
  out = {}
  for seed in seeds:
    c = copy.deepcopy(config)
    c.seed, c.seeds = int(seed), (int(seed),)
    out[seed] = run_pipeline(c, os.path.join(workdir, f"seed_{seed}"), log)
  write_seed_report(workdir, seeds)
  return out


def write_seed_report(workdir: str, seeds: Sequence[int]) -> str:
  per_seed = {s: dict(results_rows(Paths(os.path.join(workdir, f"seed_{s}")))[0]) for s in seeds}
  ks = files.read_json(os.path.join(workdir, f"seed_{seeds[0]}", "eval", "metrics.json"))["ks"]
  cols = [f"NDCG@{k}" for k in ks] + [f"HR@{k}" for k in ks]
  methods = [m for m in per_seed[seeds[0]] if all(m in r for r in per_seed.values())]
  lines = [f"# BIGRec report over seeds {list(seeds)}", "",
           "Mean ± standard deviation of test metrics over seeds (one run per seed in "
           "`seed_<s>/`, each with its own report.md).", "",
           "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  summary = {}
  for m in methods:
    vals = {c: np.array([per_seed[s][m][c] for s in seeds]) for c in cols}
    summary[m] = {c: {"mean": float(v.mean()), "std": float(v.std())} for c, v in vals.items()}
    lines.append(f"| {m} | " + " | ".join(f"{v.mean():.4f} ± {v.std():.4f}"
                                          for v in vals.values()) + " |")
  files.write_json(os.path.join(workdir, "seeds_summary.json"), summary)
  path = os.path.join(workdir, "report.md")
  files.atomic_write(path, "\n".join(lines) + "\n")
  return path
