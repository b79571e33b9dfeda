"""launch/bench.py --quick: runs both sides in their own processes and writes a well-formed
bench.json (no timing assertions: the numbers depend on the machine and its load)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = {"train", "beam", "embed", "ground"}


def _bench(*args, timeout=900, env=None):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "bench.py"), *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_quick_bench_writes_well_formed_json(tmp_path):
  out = tmp_path / "bench.json"
  # One timed run per case after the warm-up (the median of one): 79 -> 67 CPU s.
  r = _bench("--quick", "--flops", "--repeats=1", f"--out={out}")
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  rec = json.loads(out.read_text())
  assert rec["schema"] == 1 and rec["quick"] is True and rec["complete"] is True
  assert set(rec["tasks"]) == TASKS
  for side in ("jax", "torch"):
    assert rec["device"][side]["platform"] in ("cpu", "gpu", "tpu")
    assert rec["device"][side]["dtype"] in ("float32", "bfloat16")
    assert rec["sides"][side]["matmul_peak"]["flops_per_s"] > 0
    # Each worker reports its malloc (the same for both: workers inherit the environment).
    assert rec["sides"][side]["host"]["allocator"] in ("tcmalloc", "jemalloc", "glibc")
  assert len({rec["sides"][s]["host"]["allocator"] for s in ("jax", "torch")}) == 1
  from bigrec_jax import host  # whether bfloat16 operands can pay on this CPU
  assert rec["machine"]["cpu_bfloat16_flags"] == host.cpu_bfloat16_flags()
  assert rec["versions"]["jax"]["jax"] and rec["versions"]["torch"]["torch"]
  for task, entries in rec["tasks"].items():
    assert entries, task
    for e in entries:
      for side in ("jax", "torch"):
        s = e[side]
        assert s["status"] == "ok", (task, e["case"], side, s.get("reason"))
        assert s["median_s"] > 0 and s["times_s"] == [s["median_s"]]
        assert all(v > 0 for v in s["metrics"].values())
        assert s["peak_rss_bytes"] > 0
        assert e["flops"][side]["model_flops_per_call"] > 0
      assert all(v is not None and v > 0 for v in e["ratio_jax_over_torch"].values())
  assert "jax/torch" in r.stdout  # the printed table
  # LoRA and full fine-tuning steps at the same shape, and the demo's own step.
  train = {e["case"]: e for e in rec["tasks"]["train"]}
  assert set(train) == {"2x32", "full_2x32", "demo_2"}
  # The demo step: one left-padded chat-template batch with response-only labels, run by ours
  # as loop.train runs it (label window, shared prefix) and by torch over the whole batch; the
  # same batch and labels on both sides, so the same loss (the random tiny model barely moves
  # in two steps at lr 1e-4, and both adapters start with B = 0).
  demo = train["demo_2"]
  jx, tx = demo["jax"]["extra"], demo["torch"]["extra"]
  assert "label window" in jx["impl"] and "shared prefix" in jx["impl"], jx["impl"]
  for key in ("tokens", "length", "real_tokens", "label_tokens"):
    assert jx[key] == tx[key], key
  assert 0 < jx["label_tokens"] < jx["real_tokens"] < jx["tokens"]
  assert abs(jx["loss"] - tx["loss"]) < 1e-3 * tx["loss"], (jx["loss"], tx["loss"])


def test_quick_bench_bfloat16_matmul(tmp_path):
  """--dtype=bfloat16_matmul: float32 models, bfloat16 matmul operands on both sides (JAX's
  model.matmul_dtype, torch's autocast); the losses stay finite and close to each other."""
  out = tmp_path / "bench.json"
  r = _bench("--quick", "--tasks=train,beam", "--cases=2x32,full_2x32,b2_new4",
             "--dtype=bfloat16_matmul", "--repeats=1",
             f"--out={out}")
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  rec = json.loads(out.read_text())
  assert rec["complete"] is True
  for side in ("jax", "torch"):
    assert rec["device"][side]["dtype"] == "bfloat16_matmul"
  assert rec["model"]["config"]["matmul_dtype"] == "bfloat16"
  assert rec["model"]["config"]["dtype"] == "float32"
  for e in rec["tasks"]["train"]:
    losses = [e[side]["extra"]["loss"] for side in ("jax", "torch")]
    assert all(0 < x < 20 for x in losses), losses
    assert abs(losses[0] - losses[1]) < 0.1 * losses[1], losses
  for e in rec["tasks"]["beam"]:
    assert all(e[side]["status"] == "ok" for side in ("jax", "torch"))


def test_bad_task_is_a_user_error(tmp_path):
  r = _bench("--quick", "--tasks=train,nonsense", f"--out={tmp_path / 'b.json'}", timeout=120)
  assert r.returncode == 2 and "nonsense" in r.stderr
  assert not (tmp_path / "b.json").exists()


def test_runtime_package_does_not_import_torch():
  code = ("import sys, bigrec_jax.bench, bigrec_jax.bench.torch_side, bigrec_jax.bench.jax_side; "
          "assert 'torch' not in sys.modules, 'torch imported at module level'")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]


def test_shared_cpu_neighbour_holds_one_core_and_stops():
  """--neighbour=one_core: a busy process pinned to the last core runs inside the block (it
  burns CPU time there) and is gone after it."""
  import time

  from bigrec_jax.bench import measure

  with measure.neighbour("one_core", limit_s=60) as info:
    pid, core = info["pid"], info["core"]
    assert os.sched_getaffinity(pid) == {core} and core == max(os.sched_getaffinity(0))
    with open(f"/proc/{pid}/stat") as f:
      start = int(f.read().rsplit(")", 1)[1].split()[11])  # utime, clock ticks
    time.sleep(1.0)
    with open(f"/proc/{pid}/stat") as f:
      busy = int(f.read().rsplit(")", 1)[1].split()[11]) - start
    assert busy > 0.3 * os.sysconf("SC_CLK_TCK"), busy  # > 0.3 CPU-seconds in 1 s
  assert not os.path.exists(f"/proc/{pid}/stat") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]
  with measure.neighbour("none", limit_s=60) as info:
    assert info is None


def test_neighbour_choice_is_checked(tmp_path):
  r = _bench("--quick", "--neighbour=two_cores", f"--out={tmp_path / 'b.json'}", timeout=120)
  assert r.returncode != 0 and "neighbour" in r.stderr


def test_a_side_whose_worker_fails_is_reported_not_a_traceback(tmp_path):
  # A worker that dies at start (here XLA refuses an unknown flag) leaves its side without a
  # "sides" record; the table must still name the side, its error and the worker's last line.
  out = tmp_path / "b.json"
  env = dict(os.environ, XLA_FLAGS="--xla_cpu_no_such_flag=true")
  r = _bench("--quick", "--sides=jax", "--tasks=ground", f"--out={out}", timeout=300, env=env)
  assert "Traceback" not in r.stderr, r.stderr[-2000:]
  assert "jax: error: worker exited with status" in r.stdout, r.stdout[-2000:]
  record = json.loads(out.read_text())
  assert record["machine"]["xla_flags"] == "--xla_cpu_no_such_flag=true"
  entries = [e for es in record["tasks"].values() for e in es]
  assert entries and all(e["jax"]["status"] == "error" for e in entries)
  assert all("xla_cpu_no_such_flag" in e["jax"]["reason"] for e in entries)
