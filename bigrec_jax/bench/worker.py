"""One side of the benchmark in its own process: `python -m bigrec_jax.bench.worker`.

The runner writes a job file (model, dtype, cases with their inputs) and starts one worker per
side (and per case or task); the worker writes its results file atomically after every case, so
a crash or time-out still leaves the cases done so far. JAX and torch never share a process.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from typing import Any

from bigrec_jax.bench import measure, workloads
from bigrec_jax.files import write_json


def make_side(side: str, model: str, dtype: str):
  if side == "jax":
    from bigrec_jax.bench.jax_side import JaxSide

    return JaxSide(model, dtype)
  if side == "torch":
    from bigrec_jax.bench.torch_side import TorchSide

    return TorchSide(model, dtype)
  raise ValueError(f"unknown side {side!r}")


def run_job(side_name: str, job: dict[str, Any], out_path: str) -> None:
  t0 = time.time()
  result: dict[str, Any] = {"side": side_name, "host": measure.host_info(), "cases": {}}
  side = make_side(side_name, job["model"], job["dtype"])
  result.update(side.info())
  result["model_config"] = side.model_config()
  result["setup_s"] = time.time() - t0
  if job.get("flops"):
    result["matmul_peak"] = side.matmul_peak()
  write_json(out_path, result)
  for entry in job["cases"]:
    case = workloads.Case.from_json(entry)
    resettable = measure.reset_peak_rss()
    side.reset_device_peak()
    rec: dict[str, Any] = {"started": time.time()}
    try:
      r, metrics, extra = side.run_case(case, entry.get("inputs", {}), job["repeats"],
                                        job["budget_s"])
      if r is None:
        rec.update(status="skipped", reason=extra.pop("skipped"), extra=extra)
      else:
        rec.update(status="ok", median_s=r["median_s"], times_s=r["times_s"],
                   warmup_s=r["warmup_s"], cpu_s=r["cpu_s"], metrics=metrics, extra=extra)
    except Exception as e:  # recorded, so the other cases and the other side still report
      rec.update(status="error", reason=f"{type(e).__name__}: {e}"[:2000],
                 traceback=traceback.format_exc()[-4000:])
    rec["peak_rss_bytes"] = measure.peak_rss_bytes()
    rec["peak_rss_scope"] = "case" if resettable else "process"
    rec["peak_device_bytes"] = side.device_peak()
    rec["elapsed_s"] = time.time() - rec.pop("started")
    result["cases"][case.name] = rec
    write_json(out_path, result)
    print(f"[bench:{side_name}] {case.name}: {rec['status']} "
          f"{rec.get('median_s', rec.get('reason', ''))}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--side", required=True, choices=("jax", "torch"))
  ap.add_argument("--job", required=True)
  ap.add_argument("--out", required=True)
  args = ap.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  run_job(args.side, workloads.read_json_file(args.job), args.out)


if __name__ == "__main__":
  main()
