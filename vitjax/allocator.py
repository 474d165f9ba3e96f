"""The process's malloc, and why it matters to XLA:CPU.

XLA:CPU allocates a step's temporaries and outputs afresh on every call. With
glibc's malloc every block above 32 MiB is a new `mmap`, returned to the
kernel when freed, so each step touches fresh pages: a minor page fault and
a zeroed page per 4 KiB. Measured on 2 cores (experiments/RESULTS.md, "CPU
profile"): 287k faults (1.1 GB) per ViT-S/16 batch-8 train step and 440k
(1.7 GB) per Swin-T step; with tcmalloc, which keeps freed memory, about 0:
those train steps take 13-23% less time, and the digits quickstart runs at
22.6 instead of 15.6 steps/s.

tcmalloc has to be loaded before anything allocates, i.e. with `LD_PRELOAD`.
`python -m vitjax.main` does that itself: when tcmalloc is installed
(`apt-get install libtcmalloc-minimal4` on Debian / Ubuntu) and not loaded, it
re-executes itself with it preloaded, unless VITJAX_ALLOCATOR=system. For other
programs (a notebook's kernel, your own script):

    LD_PRELOAD=$(python -m vitjax.allocator) python my_script.py

`python -m vitjax.allocator` prints the library's path, or exits 1 saying how
to get it.
"""

import glob
import os
import sys
from typing import Optional

TCMALLOC_INSTALL = ("apt-get install libtcmalloc-minimal4 (Debian / Ubuntu), "
                    "or your distribution's gperftools package")
_SEARCH = ("/usr/lib/*-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
           "/opt/homebrew/lib")


def current() -> str:
  """'tcmalloc', 'jemalloc' or 'system': the malloc loaded into this process."""
  try:
    with open("/proc/self/maps") as f:
      maps = f.read()
  except OSError:
    return "system"
  for name in ("tcmalloc", "jemalloc"):
    if f"lib{name}" in maps:
      return name
  return "system"


def find_tcmalloc() -> Optional[str]:
  """Path of an installed tcmalloc shared library, or None."""
  for pattern in _SEARCH:
    for d in sorted(glob.glob(pattern)):
      for name in ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"):
        path = os.path.join(d, name)
        if os.path.exists(path):
          return path
  return None


ENV = "VITJAX_ALLOCATOR"          # 'system': keep glibc's malloc in vitjax.main
_REEXECED = "_VITJAX_TCMALLOC_REEXEC"


def reexec_with_tcmalloc(argv) -> None:
  """Replaces this process by `python argv...` with tcmalloc preloaded (does
  nothing when it already is). Raises RuntimeError if tcmalloc is missing or
  the preload did not take."""
  if current() == "tcmalloc":
    return
  path = find_tcmalloc()
  if path is None:
    raise RuntimeError(f"tcmalloc is not installed: {TCMALLOC_INSTALL}")
  if os.environ.get(_REEXECED):
    raise RuntimeError(f"LD_PRELOAD={path} did not load tcmalloc into this process")
  env = dict(os.environ)
  env[_REEXECED] = "1"
  env["LD_PRELOAD"] = ":".join(p for p in (path, env.get("LD_PRELOAD", "")) if p)
  # tcmalloc reports every allocation above 1 GiB on stderr by default.
  env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + list(argv), env)


def prefer_tcmalloc(argv) -> None:
  """For a command-line entry point, first thing: re-executes `python argv...`
  with tcmalloc preloaded when it is installed and not loaded, unless
  VITJAX_ALLOCATOR=system (or the platform is not Linux). Returns otherwise."""
  if (os.environ.get(ENV, "tcmalloc") == "system" or not sys.platform.startswith("linux")
      or current() != "system" or find_tcmalloc() is None or os.environ.get(_REEXECED)):
    return
  reexec_with_tcmalloc(argv)


def hint(backend: str) -> Optional[str]:
  """One line for the log when a CPU run uses glibc's malloc, else None."""
  if backend != "cpu" or current() != "system" or not sys.platform.startswith("linux"):
    return None
  path = find_tcmalloc()
  if path is None:
    how = f"install tcmalloc ({TCMALLOC_INSTALL}): vitjax.main then preloads it"
  elif os.environ.get(ENV) == "system":
    how = f"unset {ENV}=system to let vitjax.main preload {path}"
  else:
    how = f"start it with LD_PRELOAD={path}"
  return ("CPU run with glibc malloc: XLA:CPU steps page-fault on fresh buffers; "
          f"for about 20% faster training steps, {how} (vitjax/allocator.py)")


if __name__ == "__main__":
  found = find_tcmalloc()
  if found is None:
    sys.exit(f"tcmalloc not found: {TCMALLOC_INSTALL}")
  print(found)
