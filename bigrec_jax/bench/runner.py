"""The benchmark runner: starts the JAX and PyTorch workers, collects their results, writes
bench.json (atomically) and prints the comparison table.

Each worker is a fresh `python -m bigrec_jax.bench.worker` process: JAX and torch never share
one, and peak memory (VmHWM, GPU allocator peak) belongs to one side. With isolate="task" each
(side, task) gets its own process, with "case" each case, with "side" one process per side.
Sides alternate job by job, so both see similar machine load.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

from bigrec_jax import assets
from bigrec_jax.bench import flops as flops_lib
from bigrec_jax.bench import measure, workloads
from bigrec_jax.files import UserError, write_json

SCHEMA = 1
PRIMARY = {"train": ("tokens_per_s",), "beam": ("prompts_per_s", "new_tokens_per_s"),
           "embed": ("texts_per_s",), "ground": ("queries_per_s",)}
SIDES = ("jax", "torch")
DTYPES = workloads.DTYPES


@dataclasses.dataclass(frozen=True)
class BenchOptions:
  tasks: tuple[str, ...] = workloads.TASKS
  quick: bool = False
  model: str | None = None  # None: embedded SmolLM2 (tiny random model with quick)
  out: str = "bench.json"
  flops: bool = False
  repeats: int = 3
  budget_s: float = 120.0  # per case, timed runs after the warm-up
  isolate: str | None = None  # side | task | case; None: side with quick, else task
  dtype: str = "auto"  # auto: bfloat16 on GPU, float32 on CPU; or float32, bfloat16, bfloat16_matmul
  sides: tuple[str, ...] = SIDES
  worker_timeout_s: float | None = None
  platform: str | None = None  # JAX_PLATFORMS for the JAX worker (e.g. cpu)
  cases: tuple[str, ...] = ()  # keep only cases whose name is in this list (empty: all)
  random_weights: bool = False  # random weights with --model's architecture (config + tokenizer)
  neighbour: str = "none"  # "one_core": a busy process on one core during every worker (shared CPU)


def check(o: BenchOptions) -> BenchOptions:
  bad = [t for t in o.tasks if t not in workloads.TASKS]
  if bad or not o.tasks:
    raise UserError(f"--tasks: unknown {bad or 'empty list'}; choose from {','.join(workloads.TASKS)}")
  bad = [s for s in o.sides if s not in SIDES]
  if bad or not o.sides:
    raise UserError(f"--sides: unknown {bad or 'empty list'}; choose from {','.join(SIDES)}")
  if o.isolate not in (None, "side", "task", "case"):
    raise UserError(f"--isolate={o.isolate!r}: choose side, task or case")
  if o.dtype not in DTYPES:
    raise UserError(f"--dtype={o.dtype!r}: choose {', '.join(DTYPES)}")
  if o.neighbour not in measure.NEIGHBOURS:
    raise UserError(f"--neighbour={o.neighbour!r}: choose {', '.join(measure.NEIGHBOURS)}")
  if o.repeats < 1:
    raise UserError(f"--repeats must be >= 1, got {o.repeats}")
  if o.model and not os.path.exists(o.model):
    raise UserError(f"--model={o.model}: not found (a .gguf file or an HF directory)")
  return o


def resolve_model(o: BenchOptions) -> str:
  if o.random_weights:
    if not o.model or not os.path.isfile(os.path.join(o.model, "config.json")):
      raise UserError("--random_weights needs --model=DIR holding an HF config.json and the "
                      "tokenizer files")
    with open(os.path.join(o.model, "config.json")) as f:
      config = json.load(f)
    return workloads.random_model_dir(config, o.model)
  if o.model:
    return os.path.abspath(o.model)
  return workloads.tiny_model_dir() if o.quick else assets.smollm2_gguf()


def _groups(cases: list[workloads.Case], isolate: str) -> list[list[workloads.Case]]:
  if isolate == "side":
    return [cases]
  if isolate == "case":
    return [[c] for c in cases]
  out: dict[str, list[workloads.Case]] = {}
  for c in cases:
    out.setdefault(c.task, []).append(c)
  return list(out.values())


def _run_worker(side: str, job: dict[str, Any], tmp: str, tag: str, timeout: float,
                env: dict[str, str], neighbour: str = "none") -> tuple[dict[str, Any] | None, str]:
  job_path = os.path.join(tmp, f"{tag}.{side}.job.json")
  out_path = os.path.join(tmp, f"{tag}.{side}.out.json")
  log_path = os.path.join(tmp, f"{tag}.{side}.log")
  write_json(job_path, job, indent=None)
  cmd = [sys.executable, "-m", "bigrec_jax.bench.worker", "--side", side, "--job", job_path,
         "--out", out_path]
  print(f"[bench] {side}: {', '.join(c['name'] for c in job['cases'])}", flush=True)
  problem = ""
  with open(log_path, "w") as log:
    try:
      with measure.neighbour(neighbour, timeout):  # the same neighbour for both sides' workers
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            timeout=timeout).returncode
      if rc != 0:
        problem = f"worker exited with status {rc}"
    except subprocess.TimeoutExpired:
      problem = f"worker timed out after {timeout:.0f} s"
  with open(log_path, errors="replace") as f:
    tail = f.read()[-3000:]
  if problem:
    problem += "; log tail:\n" + tail
  result = None
  if os.path.exists(out_path):
    with open(out_path) as f:
      result = json.load(f)
  return result, problem


def _worker_env(side: str, o: BenchOptions) -> dict[str, str]:
  env = dict(os.environ)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  env.setdefault("TOKENIZERS_PARALLELISM", "false")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
  if side == "jax" and o.platform:
    env["JAX_PLATFORMS"] = o.platform
  if side == "torch" and o.platform == "cpu":
    env["CUDA_VISIBLE_DEVICES"] = ""
  return env


def run(o: BenchOptions) -> dict[str, Any]:
  """Runs every selected case on both sides and writes `o.out`; returns the bench record."""
  o = check(o)
  started = time.time()
  load_before = list(os.getloadavg())
  model = resolve_model(o)
  cases = [c for c in workloads.cases(o.tasks, o.quick) if not o.cases or c.name in o.cases]
  if not cases:
    raise UserError(f"--cases={','.join(o.cases)} selects none of the cases of "
                    f"--tasks={','.join(o.tasks)}: {[c.name for c in workloads.cases(o.tasks, o.quick)]}")
  isolate = o.isolate or ("side" if o.quick else "task")
  timeout = o.worker_timeout_s or (600.0 if o.quick else 3600.0)
  inputs = {c.name: workloads.inputs_for(c) for c in cases}
  side_info: dict[str, dict[str, Any]] = {}
  results: dict[str, dict[str, dict[str, Any]]] = {c.name: {} for c in cases}
  with tempfile.TemporaryDirectory(prefix="bigrec_bench.") as tmp:
    for gi, group in enumerate(_groups(cases, isolate)):
      job = {"model": model, "dtype": o.dtype, "repeats": o.repeats, "budget_s": o.budget_s,
             "cases": [dict(c.to_json(), inputs=inputs[c.name]) for c in group]}
      for side in o.sides:
        job["flops"] = o.flops and "matmul_peak" not in side_info.get(side, {})  # once per side
        res, problem = _run_worker(side, job, tmp, f"g{gi}", timeout, _worker_env(side, o),
                                   o.neighbour)
        if res:
          info = side_info.setdefault(side, {})
          for key in ("device", "versions", "model_config", "host", "matmul_peak"):
            if key in res and key not in info:
              info[key] = res[key]
          info.setdefault("setup_s", []).append(round(res.get("setup_s", 0.0), 2))
        for c in group:
          rec = (res or {}).get("cases", {}).get(c.name)
          if rec is None:
            rec = {"status": "error", "reason": problem or "worker wrote no result for this case"}
          results[c.name][side] = rec
      # A partial record after every group: a run cut short still leaves what it measured.
      done = [c for c in cases if len(results[c.name]) == len(o.sides)]
      partial = _assemble(o, model, done, results, side_info, isolate, load_before, started)
      write_json(o.out, dict(partial, complete=False))
  record = dict(_assemble(o, model, cases, results, side_info, isolate, load_before, started),
                complete=True)
  write_json(o.out, record)
  print(format_table(record), flush=True)
  print(f"[bench] wrote {o.out}", flush=True)
  return record


def _assemble(o, model, cases, results, side_info, isolate, load_before, started) -> dict[str, Any]:
  config = (side_info.get("jax") or side_info.get("torch") or {}).get("model_config", {})
  tasks: dict[str, list[dict[str, Any]]] = {}
  for c in cases:
    entry: dict[str, Any] = {"case": c.name, "params": c.params}
    for side in o.sides:
      entry[side] = results[c.name][side]
    ratio = {}
    j, t = entry.get("jax", {}), entry.get("torch", {})
    for m in PRIMARY[c.task]:
      a = (j.get("metrics") or {}).get(m)
      b = (t.get("metrics") or {}).get(m)
      ratio[m] = (a / b) if a and b else None
    entry["ratio_jax_over_torch"] = ratio
    if j.get("cpu_s") and t.get("cpu_s"):  # process CPU seconds per call, torch over jax
      entry["cpu_time_ratio_torch_over_jax"] = t["cpu_s"] / j["cpu_s"]
    if o.flops and config:
      entry["flops"] = _flops_entry(c, config, entry, side_info, o.sides)
    tasks.setdefault(c.task, []).append(entry)
  host = measure.host_info()
  load_after = host.pop("load_average")
  return {
      "schema": SCHEMA, "created_unix": time.time(), "wall_s": round(time.time() - started, 1),
      "quick": o.quick, "command": " ".join(sys.argv),
      "model": {"source": model, "config": config, "random_weights": o.random_weights or o.quick},
      "options": {"tasks": list(o.tasks), "repeats": o.repeats, "budget_s": o.budget_s,
                  "isolate": isolate, "dtype": o.dtype, "flops": o.flops,
                  "neighbour": o.neighbour,
                  "statistic": "median of timed runs after one warm-up run"},
      "machine": {**host, "load_average_before": load_before, "load_average_after": load_after,
                  "shared_load_note": _load_note(load_before, load_after, host.get("cores") or 1,
                                                 o.neighbour)},
      "sides": {s: {k: v for k, v in info.items() if k != "model_config"}
                for s, info in side_info.items()},
      "device": {s: info.get("device") for s, info in side_info.items()},
      "versions": {s: info.get("versions") for s, info in side_info.items()},
      "tasks": tasks,
      "flops_convention": flops_lib.__doc__.strip() if o.flops else None,
  }


def _load_note(before, after, cores, neighbour="none") -> str:
  if neighbour != "none":
    return (f"shared CPU mode (--neighbour={neighbour}): a busy process held one of the {cores} "
            "cores during every worker, both sides")
  worst = max(before[0], after[0])
  if worst > 0.5 * cores:
    return (f"measured while the machine was shared (1-min load average {before[0]:.1f} before, "
            f"{after[0]:.1f} after, {cores} cores): absolute numbers are pessimistic; ratios "
            "come from alternating runs under similar load")
  return "machine was otherwise idle"


def _flops_entry(c, config, entry, side_info, sides) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for side in sides:
    rec = entry.get(side) or {}
    if rec.get("status") != "ok":
      continue
    n = flops_lib.case_flops(c.task, c.params, config, rec.get("extra") or {})
    if n is None:
      continue
    achieved = n / rec["median_s"]
    peak = (side_info.get(side, {}).get("matmul_peak") or {}).get("flops_per_s")
    out[side] = {"model_flops_per_call": n, "achieved_flops_per_s": achieved,
                 "fraction_of_matmul_peak": (achieved / peak) if peak else None}
  return out


# ----------------------------------------------------------------------------- table

def _fmt(x, digits=3) -> str:
  if x is None:
    return "-"
  if isinstance(x, str):
    return x
  if abs(x) >= 1000:
    return f"{x:,.0f}"
  return f"{x:.{digits}g}"


def _mib(x) -> str:
  return "-" if x is None else f"{x / 2**20:,.0f}"


def format_table(record: dict[str, Any]) -> str:
  # The sides that ran, from the entries: a failed side has an error entry but no "sides" record.
  entries = [e for es in record["tasks"].values() for e in es]
  sides = [s for s in SIDES if any(s in e for e in entries)]
  flops = record["options"]["flops"]
  gpu = any((d or {}).get("platform") == "gpu" for d in record["device"].values())
  head = ["task", "case", "metric"] + sides + ["jax/torch"]
  if flops:
    head += [f"{s} MFU" for s in sides]
  head += [f"{s} RSS MiB" for s in sides]
  if gpu:
    head += [f"{s} GPU MiB" for s in sides]
  rows = [head]
  notes = []
  for task, entries in record["tasks"].items():
    for e in entries:
      for m in PRIMARY[task]:
        row = [task, e["case"], m]
        for s in sides:
          rec = e.get(s, {})
          if rec.get("status") == "ok":
            row.append(_fmt(rec["metrics"].get(m)))
          else:
            row.append(rec.get("status", "-"))
            if m == PRIMARY[task][0]:
              reason = str(rec.get("reason") or "no result").splitlines()[0]
              notes.append(f"{task} {e['case']} {s}: {rec.get('status')}: {reason[:160]}")
        r = e["ratio_jax_over_torch"].get(m)
        row.append("-" if r is None else f"{r:.2f}x")
        if flops:
          for s in sides:
            frac = ((e.get("flops") or {}).get(s) or {}).get("fraction_of_matmul_peak")
            row.append("-" if frac is None else f"{100 * frac:.1f}%")
        row += [_mib(e.get(s, {}).get("peak_rss_bytes")) for s in sides]
        if gpu:
          row += [_mib(e.get(s, {}).get("peak_device_bytes")) for s in sides]
        rows.append(row)
  widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
  lines = ["  ".join(str(v).rjust(w) if i >= 3 else str(v).ljust(w)
                     for i, (v, w) in enumerate(zip(r, widths))) for r in rows]
  lines.insert(1, "-" * len(lines[0]))
  dev = ", ".join(f"{s}: {(d or {}).get('name', '?')} {(d or {}).get('dtype', '')}"
                  for s, d in record["device"].items())
  lines.append(f"devices: {dev}; {record['machine']['shared_load_note']}")
  allocators = {s: ((info or {}).get("host") or {}).get("allocator")
                for s, info in record.get("sides", {}).items()}
  if any(allocators.values()):
    lines.append("malloc: " + ", ".join(f"{s}: {a}" for s, a in allocators.items()))
  lines += notes
  return "\n".join(lines)


def main_from_flags(tasks: Sequence[str], **kw) -> dict[str, Any]:
  return run(BenchOptions(tasks=tuple(tasks), **kw))
