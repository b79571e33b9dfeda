"""Launcher runs in forked children of one warm process: `python tests/launcher_forks.py`.

Each case a launcher test would start as `python launch/X.py ARGS` pays the Python + JAX +
bigrec_jax imports again (1.5 s idle, 3-7 s on a loaded 2-core runner). This worker imports
them once, then for every case (one JSON line on stdin: argv, cwd, env names to unset, stdout
and stderr files) forks a child that runs the launcher as `__main__` with that sys.argv, its
file descriptors 1 and 2 on the given files, and exits the way the interpreter would: the
SystemExit code, or a traceback on stderr and 1. The child's real exit status goes back as one
JSON line. Each child starts from the same pre-launcher state (no absl flag defined yet), so
the cases do not see each other's flags.

tests/conftest.py's `launcher_forks` fixture is the client; the launcher tests still run at
least one case per launcher as a plain subprocess, so the whole interpreter path stays tested.
"""
from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the launchers import at module level (their own modules are run fresh in each child).
PRELOAD = ("numpy", "jax", "jax.numpy", "absl.app", "absl.flags", "absl.logging",
           "ml_collections", "ml_collections.config_flags", "bigrec_jax.cli",
           "bigrec_jax.config", "bigrec_jax.files", "bigrec_jax.parallel", "bigrec_jax.cluster",
           "bigrec_jax.data.prepare", "bigrec_jax.data.prompts", "bigrec_jax.data.titles",
           "bigrec_jax.evaluate.compare", "bigrec_jax.evaluate.run",
           "bigrec_jax.generate.runner", "bigrec_jax.baselines.models",
           "bigrec_jax.baselines.run", "bigrec_jax.bench", "bigrec_jax.train.loop",
           "bigrec_jax.pipeline")


def _exit_code(e: SystemExit) -> int:
  """What the interpreter exits with for an uncaught SystemExit (printing a non-int code)."""
  if e.code is None:
    return 0
  if isinstance(e.code, int):
    return e.code
  print(e.code, file=sys.stderr)
  return 1


def _child(case: dict) -> None:
  code = 1
  try:
    os.chdir(case["cwd"])
    for name in case.get("unset", ()):
      os.environ.pop(name, None)
    for fd, path in ((1, case["stdout"]), (2, case["stderr"])):
      target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
      os.dup2(target, fd)
      os.close(target)
    argv = list(case["argv"])
    sys.argv = argv
    sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))  # as `python SCRIPT` sets it
    try:
      runpy.run_path(argv[0], run_name="__main__")
      code = 0
    except SystemExit as e:
      code = _exit_code(e)
    except BaseException:  # noqa: BLE001: the interpreter's own uncaught-exception path
      traceback.print_exc()
      code = 1
    atexit._run_exitfuncs()  # pylint: disable=protected-access
  finally:
    try:
      sys.stdout.flush()
      sys.stderr.flush()
    finally:
      os._exit(code)


def main() -> None:
  sys.path.insert(0, ROOT)
  import importlib

  for name in PRELOAD:
    importlib.import_module(name)
  from absl import flags

  # absl's and orbax's own flags are defined at import, as in the launcher's process; no
  # launcher flag may be (each child defines its launcher's).
  ours = [m for m in flags.FLAGS.flags_by_module_dict() if "bigrec" in m or "launch" in m]
  assert not ours, f"a preloaded module defined launcher flags: {ours}"
  protocol = sys.stdout
  print(json.dumps({"ready": True}), file=protocol, flush=True)
  for line in sys.stdin:
    case = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
      _child(case)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), file=protocol,
          flush=True)


if __name__ == "__main__":
  main()
