"""Shared launcher plumbing: every `launch/*.py` runs its main through `run`.

A `UserError` (bad flag, bad file) is printed as one paragraph on stderr with exit status 2 and
no traceback; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
import textwrap
from typing import Callable

from absl import app

from bigrec_jax.files import UserError


def fail(message: str) -> None:
  """Prints a user-facing error and exits with status 2."""
  sys.stderr.write("error: " + textwrap.fill(str(message), width=100, subsequent_indent="  ",
                                             break_long_words=False, break_on_hyphens=False) + "\n")
  sys.stderr.flush()
  sys.exit(2)


def run(main: Callable[[list[str]], None]) -> None:
  def guarded(argv):
    try:
      main(argv)
    except UserError as e:
      fail(str(e))

  try:
    app.run(guarded)
  except UserError as e:  # raised while flags were being parsed (config files)
    fail(str(e))
