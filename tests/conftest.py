"""Shared fixtures: the real SmolLM2 (ours and the transformers reference), loaded once."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def smollm2():
  """The embedded SmolLM2-135M-Instruct as a bigrec_jax LoadedModel (float32)."""
  from bigrec_jax.model import load_model

  return load_model()


@pytest.fixture(scope="session")
def hf_smollm2():
  """transformers' LlamaForCausalLM loaded from the same GGUF file (the PyTorch reference)."""
  import torch
  from transformers import AutoModelForCausalLM

  from bigrec_jax import assets

  gguf = assets.smollm2_gguf()
  model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf),
                                               gguf_file=os.path.basename(gguf),
                                               dtype=torch.float32)
  model.eval()
  return model


@pytest.fixture(scope="session")
def bigrec_prompts():
  """A few real BIGRec prompts (movie domain, ML-100K titles), built by the prompt builder."""
  from bigrec_jax.data import prompts

  histories = [["Toy Story", "GoldenEye", "Four Rooms", "Get Shorty", "Copycat"],
               ["Star Wars", "Fargo", "Contact"],
               ["Scream", "Liar Liar", "Air Force One", "Titanic", "Evita", "Jackie Brown"],
               ["Twelve Monkeys"]]
  return [prompts.prompt_for(prompts.make_fields("movie", h, "")) for h in histories]


class LauncherForks:
  """Runs `launch/*.py ARGS` in a forked child of one warm worker (tests/launcher_forks.py): the
  same exit status, stdout and stderr as `python launch/X.py ARGS`, without paying the imports
  again for every case. `run` returns a subprocess.CompletedProcess."""

  def __init__(self, root: str, env: dict, scratch: str):
    import subprocess
    import sys

    self._root, self._scratch, self._count = root, scratch, 0
    self._proc = subprocess.Popen([sys.executable, os.path.join(root, "tests", "launcher_forks.py")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  cwd=root, env=env)
    assert self._reply(300) == {"ready": True}

  def _reply(self, timeout: float) -> dict:
    import json
    import select

    ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
    if not ready:
      self._proc.kill()
      raise TimeoutError(f"launcher_forks: no answer in {timeout} s")
    line = self._proc.stdout.readline()
    assert line, f"launcher_forks worker died (exit {self._proc.wait()})"
    return json.loads(line)

  def run(self, *args: str, cwd: str | None = None, unset: tuple[str, ...] = (),
          timeout: float = 120):
    import json
    import subprocess
    import sys

    self._count += 1
    out = os.path.join(self._scratch, f"{self._count}.out")
    err = os.path.join(self._scratch, f"{self._count}.err")
    case = {"argv": list(args), "cwd": cwd or self._root, "unset": list(unset), "stdout": out,
            "stderr": err}
    self._proc.stdin.write(json.dumps(case) + "\n")
    self._proc.stdin.flush()
    code = self._reply(timeout)["returncode"]
    with open(out) as f_out, open(err) as f_err:
      return subprocess.CompletedProcess([sys.executable, *args], code, f_out.read(), f_err.read())

  def close(self) -> None:
    self._proc.stdin.close()
    self._proc.wait(timeout=60)


@pytest.fixture(scope="session")
def launcher_forks(tmp_path_factory):
  """One warm worker for every launcher case that runs in a forked child (LauncherForks)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  forks = LauncherForks(root, env, str(tmp_path_factory.mktemp("launcher_forks")))
  yield forks
  forks.close()


# ----------------------------------------------------------------------------- test tiers
# Every test gets one tier marker from what it loads (`bash launch/test.sh -m unit` is the fast
# tier; CI runs all three):
# - e2e: the real SmolLM2 weights (our loader or transformers'), or a whole pipeline/launcher run
#   that trains or generates;
# - integration: another process (launchers, jax.distributed workers, the bench), torch, or the
#   embedded data files;
# - unit: everything else (in-memory, toy inputs, a tiny random model).
_E2E_FIXTURES = {"smollm2", "hf_smollm2", "smollm2_tokenizer"}
_E2E_WORDS = ("load_model(", "smollm2", "pipeline.run", "launch/pipeline.py", "launch/train.py",
              "launch/generate.py", "loop.train(", "run_pipeline", "Generator(")
# Module names that say what the whole file loads (real data, orbax, TFDS, other processes).
_E2E_MODULES = ("smollm2", "ml100k", "finetuned", "hf_parity", "pipeline")
_INTEGRATION_MODULES = ("tfds", "checkpoint", "fewshot", "export", "launcher", "multihost", "mesh",
                        "resume", "bench", "configs", "bad_input", "cluster")
_INTEGRATION_FIXTURES = {"ml100k_dir"}
_INTEGRATION_WORDS = ("train_and_evaluate(", "pipeline", "subprocess", "import torch", "transformers", "peft", "jax.distributed",
                      "assets.", "launch/", "multiprocessing", "bench")


def _tier(item) -> str:
  import inspect

  fixtures = set(getattr(item, "fixturenames", ()))
  try:
    own = inspect.getsource(item.function)
  except (OSError, TypeError, AttributeError):
    own = ""
  module = getattr(item.module, "__file__", "") or ""
  try:
    with open(module) as f:
      module_text = f.read()
  except OSError:
    module_text = ""
  name = os.path.basename(module)
  if (fixtures & _E2E_FIXTURES or any(w in own for w in _E2E_WORDS)
      or any(w in name for w in _E2E_MODULES)):
    return "e2e"
  if item.get_closest_marker("slow"):
    return "e2e"
  if any(w in name for w in _INTEGRATION_MODULES) or fixtures & _INTEGRATION_FIXTURES:
    return "integration"
  if any(w in own for w in _INTEGRATION_WORDS) or any(
      w in module_text for w in ("import subprocess", "import torch", "jax.distributed")):
    return "integration"
  return "unit"


def pytest_configure(config):
  # Compiling is a large share of the suite's time (on the 2-core CPU a beam search over a tiny
  # model compiles in ~7 s with XLA:CPU's LLVM optimisation, ~3 s without). Without it a mix of
  # tiny-model and real-SmolLM2 test files (test_guide, test_stop_at_quote, test_llama,
  # test_train_step) ran in 358 s against 457 s: the real model's programs run a bit slower, but
  # most programs here run once or a few times. The exception, trainings of thousands of steps,
  # turn it back on in a process of their own (baselines/conftest.py). Set before any backend
  # starts and inherited by the launchers and workers the tests start; an XLA_FLAGS that already
  # chooses an optimisation level is left as it is.
  flags = os.environ.get("XLA_FLAGS", "")
  if "optimization_level" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level=0".strip()
  for name, what in (("unit", "fast in-memory tests (toy inputs, tiny random models)"),
                     ("integration", "other processes, torch, the embedded data files"),
                     ("e2e", "the real SmolLM2 or a whole pipeline/launcher run")):
    config.addinivalue_line("markers", f"{name}: {what}")


# The longest files, longest first (worker seconds, junit, 2026-12-02 evening): the two workers
# take whole files in collection order, so these start first and the short ones fill in at the
# end, instead of one worker finishing alone on a long file while the other idles.
_LONGEST_FILES = ("test_pipeline.py", "test_train_full_resume.py", "test_bench.py",
                  "test_launcher_bad_input.py", "test_train_resume.py", "test_hf_parity_train.py",
                  "test_train_step.py", "test_train_full.py", "test_hf_parity.py", "test_dros.py",
                  "test_train_full_mesh.py", "test_hf_parity_constrained.py",
                  "test_train_baseline_launcher.py", "test_catalog_shards.py", "test_guide.py",
                  "test_prior.py", "test_beam_search.py", "test_finetuned.py")


def pytest_collection_modifyitems(config, items):
  for item in items:
    item.add_marker(getattr(pytest.mark, _tier(item)))
  first = {name: i for i, name in enumerate(_LONGEST_FILES)}
  items.sort(key=lambda item: first.get(os.path.basename(str(item.fspath)), len(first)))
