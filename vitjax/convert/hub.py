"""Offline Hugging Face cache: `hf:<org>/<name>` -> a local snapshot folder.

The cache is the one `huggingface_hub` fills (`$HF_HUB_CACHE`, else
`$HF_HOME/hub`, else ~/.cache/huggingface/hub), laid out as
`models--<org>--<name>/snapshots/<commit>/` with `refs/<branch>` holding the
commit. Nothing here touches the network: a model that is not in the cache is
one UserError naming the folder looked in and the command that fills it on a
machine with network access.
"""

import os
import re
from typing import Optional

from vitjax.errors import UserError

PREFIX = "hf:"


def is_hub_spec(path) -> bool:
  """Whether `path` is an `hf:<org>/<name>[@revision]` reference."""
  return isinstance(path, str) and path.startswith(PREFIX)


def cache_dir() -> str:
  """The Hugging Face hub cache folder, as `huggingface_hub` chooses it."""
  for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
    if os.environ.get(var):
      return os.path.expanduser(os.environ[var])
  home = os.environ.get("HF_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
  return os.path.join(os.path.expanduser(home), "hub")


def _download_hint(repo: str, revision: Optional[str]) -> str:
  rev = f" --revision {revision}" if revision else ""
  rev_py = f", revision={revision!r}" if revision else ""
  return ("On a machine with network access (with the same HF_HOME / HF_HUB_CACHE), run\n"
          f"  huggingface-cli download {repo}{rev} config.json model.safetensors\n"
          "or\n"
          f"  python -c \"from huggingface_hub import snapshot_download; "
          f"snapshot_download({repo!r}{rev_py})\"\n"
          "and copy the cache folder here; vitjax never downloads.")


def resolve(spec: str) -> str:
  """The snapshot folder of `hf:<org>/<name>[@revision]` in the local cache.

  revision: a branch or tag (read from refs/), or a commit (a snapshot folder
  name); default 'main', or the only snapshot when there is no refs/main.
  """
  ref = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
  repo, _, revision = ref.partition("@")
  if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo):
    raise UserError(f"{spec!r} is not a Hugging Face model reference: write "
                    "hf:<org>/<name> (optionally @<revision>), e.g. "
                    "hf:microsoft/swin-tiny-patch4-window7-224.")
  cache = cache_dir()
  folder = os.path.join(cache, "models--" + repo.replace("/", "--"))
  snapshots = os.path.join(folder, "snapshots")
  found = sorted(os.listdir(snapshots)) if os.path.isdir(snapshots) else []
  if not found:
    raise UserError(f"{repo} is not in the local Hugging Face cache: no snapshot in "
                    f"{snapshots} (cache {cache}, from $HF_HUB_CACHE or $HF_HOME/hub). "
                    + _download_hint(repo, revision or None))
  commit = None
  ref_file = os.path.join(folder, "refs", revision or "main")
  if os.path.isfile(ref_file):
    with open(ref_file) as f:
      commit = f.read().strip()
  elif revision:
    commit = revision
  elif len(found) == 1:
    commit = found[0]
  else:
    raise UserError(f"{repo} has {len(found)} snapshots in {snapshots} ({', '.join(found)}) "
                    f"and no {ref_file}: name one, e.g. hf:{repo}@{found[0]}.")
  path = os.path.join(snapshots, commit)
  if not os.path.isdir(path):
    raise UserError(f"{repo}@{revision or 'main'} (commit {commit}) is not in the local "
                    f"Hugging Face cache: no folder {path}; it has {', '.join(found)}. "
                    + _download_hint(repo, revision or None))
  return path


__all__ = ["PREFIX", "cache_dir", "is_hub_spec", "resolve"]
