"""Shared launcher plumbing: every `launch/*.py` runs its main through `run`.

A bad flag or config override, or a `UserError` (bad file, bad value), is printed as one
paragraph on stderr with exit status 2 and no traceback; anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations

import os
import sys
import textwrap
from typing import Callable

from absl import app, flags, logging

from bigrec_jax.files import UserError


def fail(message: str) -> None:
  """Prints a user-facing error and exits with status 2."""
  sys.stderr.write("error: " + textwrap.fill(str(message), width=100, subsequent_indent="  ",
                                             break_long_words=False, break_on_hyphens=False) + "\n")
  sys.stderr.flush()
  sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  if any(a in ("--help", "-h", "-?", "--helpshort") for a in argv[1:]):
    app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)  # absl itself exits 1
  try:
    rest = flags.FLAGS(argv)
    for name in list(flags.FLAGS):  # config files load lazily: surface their errors now
      flag = flags.FLAGS[name]
      if type(flag).__name__ == "_ConfigFlag" and flag.value is not None:
        flag.value.keys()
    if not flags.FLAGS["verbosity"].present:  # orbax/absl INFO lines drown the progress output
      logging.set_verbosity(logging.WARNING)
    return rest
  except (flags.Error, UserError, ValueError, OSError, KeyError, AttributeError, TypeError) as e:
    prog = os.path.basename(argv[0]) if argv else "launcher"
    fail(f"{prog}: {e} (run with --help to see every flag)")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def define_config_file(name: str = "config", default: str = "configs/default.py",
                       help_text: str = "Config file (configs/*.py); override any field with "
                       "--config.<section>.<field>=value."):
  """`config_flags.DEFINE_config_file` with a repo-relative default and exit-2 errors.

  ml_collections parses `--config.x=...` overrides while the flag is being defined, so a typo in
  a field name would otherwise end in a traceback before `run` starts.
  """
  from ml_collections import config_flags

  if not os.path.isabs(default):
    default = os.path.join(ROOT, default)
  try:
    holder = config_flags.DEFINE_config_file(name, default, help_text)
    # List it under the launcher in --help (it is defined from this module).
    flags.FLAGS.register_flag_by_module(sys.argv[0], flags.FLAGS[name])
    return holder
  except (AttributeError, KeyError, ValueError, TypeError, OSError) as e:
    fail(f"--{name}: {e} (see the config file for every field)")


def define_multihost_flags() -> Callable[[], None]:
  """--coordinator_address/--num_processes/--process_id; returns the function that applies them.

  Cloud TPU slices and SLURM jobs are detected without the flags (parallel.py).
  """
  coordinator = flags.DEFINE_string("coordinator_address", "",
                                    "Multi-host: host:port of process 0 (the coordinator).")
  count = flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
  index = flags.DEFINE_integer("process_id", 0, "Multi-host: index of this process.")
  for holder in (coordinator, count, index):
    flags.FLAGS.register_flag_by_module(sys.argv[0], flags.FLAGS[holder.name])

  def initialize() -> None:
    from bigrec_jax import parallel

    parallel.maybe_initialize_distributed(coordinator.value, count.value, index.value)

  return initialize


def run(main: Callable[[list[str]], None]) -> None:
  def guarded(argv):
    try:
      main(argv)
    except UserError as e:
      fail(str(e))

  app.run(guarded, flags_parser=_parse_flags)
