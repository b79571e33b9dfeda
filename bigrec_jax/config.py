"""The config tree (configs/default.py) meets the code here: options built from its sections,
and the one checker of its values (`check`).

`options(cls, section, **given)` builds an options dataclass (GenerateOptions, EvaluateOptions,
...) from the config section of the same field names, so a field added to the section reaches
the stage without a field-by-field copy; `given` supplies what the section does not hold (paths
of the workdir, fields of other sections). A dataclass field whose default is None takes None for
the config's "" or 0 (a locked config cannot hold None and a number or string in turn).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, TypeVar

from bigrec_jax import files, parallel
from bigrec_jax.files import UserError

T = TypeVar("T")


def options(cls: type[T], section, **given: Any) -> T:
  """cls(**{its fields the section holds}, **given); `given` wins over the section."""
  kw = {}
  for field in dataclasses.fields(cls):
    if field.name in given or field.name not in section:
      continue
    value = section[field.name]
    if field.default is None and value in ("", 0):
      value = None
    kw[field.name] = tuple(value) if isinstance(value, list) else value
  return cls(**kw, **given)


def prepare_options(config, **given: Any):
  """The prepare stage's PrepareOptions from the `data` section (and `seed`)."""
  from bigrec_jax.data.prepare import PrepareOptions

  d = config.data
  return options(PrepareOptions, d, **{
      "eval_sample_size": d.valid_test_size, "valid_sample_size": d.valid_size or None,
      "eval_sample_seed": d.valid_test_seed, "few_shot_sample": d.sample,
      "few_shot_seed": config.seed, **given})


# ----------------------------------------------------------------------------- the checker

_DTYPES = ("float32", "bfloat16", "float16")


def check(config, *, need_data: bool = False, check_devices: bool = False,
          num_devices: int | None = None) -> None:
  """The one checker of a config tree: every check that needs no heavy work, run by every entry
  point that takes one (each stage launcher through cli.config_of, pipeline.run_pipeline,
  loop.train) before any model or data loads. A bad value is a UserError naming its field.

  `need_data`: the prepared directories of `data.dir` (launch/train.py) must exist.
  `check_devices`: the mesh against the devices (needs the JAX backend, so after
  `jax.distributed.initialize`); `num_devices` overrides jax.device_count().
  """
  _check_pipeline(config)
  check_baselines(config.baselines)
  _check_train(config)
  parallel.parse_rules(config.mesh.rules)
  if check_devices:
    _check_devices(config, num_devices)
  if need_data:
    _check_data_dirs(config)


def check_baselines(b, prefix: str = "--config.baselines") -> None:
  """The baselines' hyperparameters (configs/baselines.py, the default tree's `baselines`): run
  by `check`, and by launch/train_baseline.py on its own tree (prefix "--config")."""
  from bigrec_jax.baselines import dros, trainer

  try:
    if b.max_len < 1:
      raise UserError(f"config.max_len must be >= 1, got {b.max_len}")
    trainer.TrainSettings.from_mapping(b.train.to_dict())
    dros.DROSSettings.from_mapping(b.dros.to_dict())
  except UserError as e:
    message = str(e)
    raise UserError(prefix + message[len("config"):] if message.startswith("config.")
                    else message) from None


def _check_pipeline(config) -> None:
  from bigrec_jax import pipeline
  from bigrec_jax.data.prepare import DATASETS
  from bigrec_jax.evaluate import compare

  stages, p = pipeline.STAGES, config.pipeline
  unknown = set(p.force_stages) - set(stages) - {"all"}
  if unknown:
    raise UserError(f"--force_stage: unknown stage(s) {sorted(unknown)}; stages are {stages}")
  unknown = [s for s in p.stages if s not in stages]
  if unknown:
    raise UserError(f"--stages (config.pipeline.stages): unknown stage(s) {unknown}; stages are "
                    f"{stages}")
  d = config.data
  for field, low in (("valid_test_size", 1), ("history_len", 1), ("sample", -1),
                     ("valid_sample", -1), ("min_history", 0)):  # min_history 0: the dataset's
    if d[field] < low:
      raise UserError(f"--config.data.{field}={d[field]}: must be >= {low}")
  from bigrec_jax import cli
  from bigrec_jax.data import prepare, prompts, sequences, titles

  sequences.SequenceRules(train_fraction=d.train_fraction, valid_fraction=d.valid_fraction).check()
  if d.domain:
    cli.names("--config.data.domain", [d.domain], prompts.DOMAINS)
  cli.names("--config.data.title_articles", [d.title_articles], titles.TITLE_ARTICLE_STYLES)
  try:
    prepare.rating_rule(d.target_rating_above, None)
  except UserError:
    raise UserError(f"--config.data.target_rating_above={d.target_rating_above}: must be a "
                    "number, 'default' or 'none'") from None
  if d.valid_size < 0:
    raise UserError(f"--config.data.valid_size={d.valid_size}: must be >= 0 (0: "
                    "valid_test_size)")
  # The default `seeds` is empty, so the flag parser cannot infer its element type: check here.
  if not all(isinstance(s, int) and not isinstance(s, bool) for s in config.seeds):
    raise UserError(f"--config.seeds={','.join(map(str, config.seeds))}: expected a "
                    "comma-separated list of integers, e.g. --config.seeds=0,1,2")
  if len(set(config.seeds)) != len(config.seeds):
    raise UserError(f"--config.seeds={','.join(map(str, config.seeds))}: a seed is repeated (each "
                    "seed is one run under workdir/seed_<s>)")
  if d.encoding:
    import codecs

    try:
      codecs.lookup(d.encoding)
    except LookupError:
      raise UserError(f"--config.data.encoding={d.encoding}: unknown text encoding "
                      "(e.g. utf-8, ISO-8859-1, cp1252)") from None
  if d.dataset not in DATASETS:
    raise UserError(f"--config.data.dataset={d.dataset!r}: choose one of {', '.join(DATASETS)}")
  g = config.generate  # checked here, not after training has run
  for field, low in (("num_beams", 1), ("num_return_sequences", 1), ("max_new_tokens", 1),
                     ("batch_size", 1), ("bucket_multiple", 1), ("max_prompt_len", 0)):
    if g[field] < low:  # max_prompt_len 0: the model's context minus max_new_tokens
      raise UserError(f"--config.generate.{field}={g[field]}: must be >= {low}")
  for field in ("embed_batch_size", "gamma_batch"):
    if config.ground[field] < 1:
      raise UserError(f"--config.ground.{field}={config.ground[field]}: must be >= 1")
  if config.ground.query_batch < 0:
    raise UserError(f"--config.ground.query_batch={config.ground.query_batch}: must be >= 1, "
                    "or 0 (from the memory budget)")
  for field in ("pop_gammas", "cf_gammas"):
    grid = list(config.ground[field])
    if not grid or any(not 0 <= gamma < float("inf") for gamma in grid):
      raise UserError(f"--config.ground.{field}={grid}: must be a non-empty list of gammas >= 0")
  unknown = [m for m in config.ground.cf_sources if m not in config.baselines.models]
  if unknown:
    raise UserError(f"--config.ground.cf_sources: {unknown} not in --config.baselines.models "
                    f"{tuple(config.baselines.models)}: CF scores come from the baselines run")
  for flag, path in (("model.path", config.model.path), ("data.interactions_file",
                                                         d.interactions_file),
                     ("data.items_file", d.items_file)):
    if path:
      files.check_filesystem(path, f"--config.{flag}")
      if not files.exists(path):
        raise UserError(f"--config.{flag}={path}: no such file or directory")
  for flag in ("model.tokenizer", "ground.embedding_cache"):  # read or written by later stages
    section, field = flag.split(".")
    if config[section].get(field):
      files.check_filesystem(config[section][field], f"--config.{flag}")
  ks = list(config.ground.ks)
  if ks != sorted(set(ks)) or not ks or ks[0] < 1:
    raise UserError(f"--config.ground.ks={ks}: must be positive, sorted and unique")
  if g.num_return_sequences > g.num_beams:
    raise UserError(f"--config.generate.num_return_sequences={g.num_return_sequences} cannot "
                    f"exceed --config.generate.num_beams={g.num_beams}")
  beams = config.ground.beams
  if not 1 <= beams <= g.num_return_sequences:
    raise UserError(f"--config.ground.beams={beams}: must be in 1..num_return_sequences "
                    f"({g.num_return_sequences})")
  for spec in p.compare:
    compare.parse_run(spec, "--config.pipeline.compare")
  unknown_models = set(config.baselines.models) - {"sasrec", "gru4rec", "caser", "mostpop", "dros"}
  if unknown_models:
    raise UserError(f"--config.baselines.models: unknown {sorted(unknown_models)}")
  _check_decoding(config)


def _check_decoding(config) -> None:
  from bigrec_jax.generate import runner

  g = config.generate
  runner.check_catalog_options(options(runner.GenerateOptions, g))
  if g.assistant in runner.CF_ASSISTANTS and g.assistant not in config.baselines.models:
    raise UserError(f"--config.generate.assistant={g.assistant} is not trained: add it to "
                    "--config.baselines.models")
  for a in g.guidance_grid:
    runner.check_alpha(g.assistant, a, "--config.generate.guidance_grid")
  if g.guidance_grid and g.assistant == "none":
    raise UserError("--config.generate.guidance_grid needs --config.generate.assistant")
  if g.length_penalty_grid and not g.constrained:
    raise UserError("--config.generate.length_penalty_grid: the grid is chosen on grounded "
                    "catalog titles; it needs --config.generate.constrained=true")
  if searched(g):
    method, _, metric = g.guidance_metric.partition("/")
    cf = [m for m in config.ground.cf_sources if m in config.baselines.models]
    methods = ["bigrec", "bigrec+pop"] + [f"{p}{m}" for m in cf
                                          for p in ("bigrec+cf:", "bigrec+pop+cf:")]
    metrics = [f"{n}@{k}" for k in config.ground.ks for n in ("NDCG", "HR")]
    if method not in methods or metric not in metrics:
      raise UserError(f"--config.generate.guidance_metric={g.guidance_metric!r}: expected "
                      f"method/metric with a method of {methods} and a metric of {metrics}")


def searched(g) -> bool:
  """Does generation choose alpha and/or length_penalty on the valid rows?"""
  return bool(g.guidance_grid) or bool(g.length_penalty_grid)


def _check_train(config) -> None:
  from bigrec_jax.train import loop

  t, d = config.train, config.data
  positive = {"train.learning_rate": t.learning_rate, "train.micro_batch_size": t.micro_batch_size,
              "train.batch_size": t.batch_size, "train.num_epochs": t.num_epochs,
              "train.eval_batch_size": t.eval_batch_size,
              "train.keep_checkpoints": t.keep_checkpoints,
              "train.eval_every_epochs": t.eval_every_epochs,
              "train.log_every_steps": t.log_every_steps,
              "data.cutoff_len": d.cutoff_len, "data.bucket_multiple": d.bucket_multiple}
  for name, value in positive.items():
    if not value > 0:
      raise UserError(f"--config.{name} must be positive, got {value}")
  from bigrec_jax.data.prompts import TEMPLATES

  if d.prompt_template not in TEMPLATES:
    raise UserError(f"--config.data.prompt_template={d.prompt_template!r}: choose from "
                    f"{TEMPLATES}")
  from bigrec_jax.train.optimizer import SCHEDULES

  if t.schedule not in SCHEDULES:
    raise UserError(f"--config.train.schedule={t.schedule!r}: choose from {SCHEDULES}")
  non_negative = {"train.warmup_steps": t.warmup_steps, "train.weight_decay": t.weight_decay,
                  "train.max_grad_norm": t.max_grad_norm,
                  "train.early_stopping_patience": t.early_stopping_patience,
                  "train.checkpoint_every_steps": t.checkpoint_every_steps}
  for name, value in non_negative.items():
    if value < 0:
      raise UserError(f"--config.{name} must be >= 0, got {value}")
  if t.max_steps == 0 or t.max_steps < -1:
    raise UserError(f"--config.train.max_steps must be -1 (from epochs) or positive, got "
                    f"{t.max_steps}")
  if t.batch_size % t.micro_batch_size:
    raise UserError(f"--config.train.batch_size {t.batch_size} is not a multiple of "
                    f"--config.train.micro_batch_size {t.micro_batch_size}")
  loop.mode_of(config)
  if not 0.0 <= config.lora.dropout < 1.0:
    raise UserError(f"--config.lora.dropout must be in [0, 1), got {config.lora.dropout}")
  loop.lora_config_of(config)  # the one check of the LoRA targets, rank and alpha: LoraConfig's
  for name in ("dtype", "param_dtype"):
    if config.model[name] not in _DTYPES:
      raise UserError(f"--config.model.{name} must be one of {_DTYPES}, got "
                      f"{config.model[name]!r}")
  if config.model.matmul_dtype not in ("", "auto") + _DTYPES:
    raise UserError(f"--config.model.matmul_dtype must be '' (= dtype), 'auto' (bfloat16 where "
                    f"the host multiplies it in hardware) or one of {_DTYPES}, got "
                    f"{config.model.matmul_dtype!r}")
  from bigrec_jax.model.ops import KERNELS

  if config.model.kernels not in KERNELS:
    raise UserError(f"--config.model.kernels must be one of {KERNELS}, got "
                    f"{config.model.kernels!r}")
  if len(tuple(config.mesh.shape)) != len(parallel.MESH_AXES):
    raise UserError(f"--config.mesh.shape {tuple(config.mesh.shape)} needs one size per axis "
                    f"{parallel.MESH_AXES}")


def _check_devices(config, num_devices: int | None) -> None:
  import jax

  t = config.train
  n = num_devices if num_devices is not None else jax.device_count()
  shape = parallel.resolve_mesh_shape(tuple(config.mesh.shape), n)
  dp = shape[0] * shape[1]
  if t.batch_size % (t.micro_batch_size * dp):
    raise UserError(f"--config.train.batch_size {t.batch_size} must be a multiple of "
                    f"micro_batch_size x data-parallel size = {t.micro_batch_size} x {dp}")
  if dp % jax.process_count():
    raise UserError(f"the data-parallel size {dp} (mesh data x fsdp) must be a multiple of the "
                    f"{jax.process_count()} processes: each process feeds its own rows")


def _check_data_dirs(config) -> None:
  from bigrec_jax.train import loop

  dirs = loop.data_dirs(config)
  if not dirs:
    raise UserError("--config.data.dir is empty: give a directory written by "
                    "launch/prepare_data.py")
  for directory in dirs:
    for split in ("train", config.data.valid_split):
      path = os.path.join(directory, f"{split}.json")
      if split and not files.exists(path):
        raise UserError(f"{path}: not found (run launch/prepare_data.py, or set "
                        "--config.data.dir / --config.data.valid_split)")
