"""Parameter sharding by rules (vitjax/sharding.py): the rules, their errors, and
the same losses under data parallelism, FSDP and FSDP x tensor parallelism on
8 simulated devices; checkpoints restore onto other meshes."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from conftest import ROOT, free_port, run_main
from experiments.fault_injection import final_eval, kill_after
from vitjax import sharding as shard_lib
from vitjax.config import default_config, validate_config
from vitjax.errors import UserError
from vitjax.metric_writer import read_metrics

S = jax.ShapeDtypeStruct
STATE = {"params": {"block_0": {"attn": {"qkv": {"kernel": S((64, 192), jnp.float32),
                                                 "bias": S((192,), jnp.float32)}}},
                    "head": {"kernel": S((64, 10), jnp.float32)},
                    "norm": {"scale": S((64,), jnp.float32)}},
         "opt_state": {"mu": {"block_0": {"attn": {"qkv": {"kernel": S((64, 192),
                                                                      jnp.float32)}}}},
                       "count": S((), jnp.int32)}}


def _specs(tree):
  return {shard_lib.path_name(p): s.spec
          for p, s in jax.tree_util.tree_leaves_with_path(tree)}


def test_rules_first_match_wins_fsdp_takes_the_largest_divisible_dim():
  mesh = AbstractMesh((4, 2), ("fsdp", "tensor"))
  rules = ((r"attn/qkv/kernel$", (None, "tensor")), (".*", "fsdp"))
  specs = _specs(shard_lib.state_shardings(STATE, mesh, rules, fsdp_min_size=128))
  assert specs["params/block_0/attn/qkv/kernel"] == P(None, "tensor")
  assert specs["opt_state/mu/block_0/attn/qkv/kernel"] == P(None, "tensor")  # moments follow
  assert specs["params/block_0/attn/qkv/bias"] == P("fsdp")      # 192 % 4 == 0
  assert specs["params/head/kernel"] == P("fsdp", None)          # 64 > 10, 64 % 4 == 0
  assert specs["params/norm/scale"] == P()                      # under fsdp_min_size
  assert specs["opt_state/count"] == P()                        # scalars replicated
  # No rules: everything replicated (the data-parallel default).
  assert set(_specs(shard_lib.state_shardings(STATE, mesh)).values()) == {P()}


@pytest.mark.parametrize("rules,match", [
    (((r"attn/qkv/kernle$", "fsdp"),), r"match no array"),
    (((r"qkv/kernel$", (None, "tensor", None)),), r"has 3 entries"),
    (((r"qkv/bias$", ("expert",)),), r"only \('fsdp', 'tensor'\)"),
    (((r"head/kernel$", (None, "fsdp")),), r"dimension 1 of params/head/kernel .* size 10, .*4 devices"),
    (((r".*", "zero3"),), r"'replicate', 'fsdp'"),
])
def test_bad_rules_are_one_clear_message(rules, match):
  with pytest.raises(UserError, match=match):
    shard_lib.state_shardings(STATE, AbstractMesh((4, 2), ("fsdp", "tensor")), rules)


def test_bad_meshes_and_batches_are_one_clear_message():
  with pytest.raises(UserError, match=r"has 3 devices, but this run has 1"):
    shard_lib.create_mesh((("data", 3),))
  with pytest.raises(UserError, match="at most one -1"):
    shard_lib.create_mesh((("data", -1), ("fsdp", -1)))
  mesh = shard_lib.create_mesh((("data", -1),))
  assert mesh.shape == {"data": jax.device_count()}
  c = default_config()
  c.batch_size = 12
  with pytest.raises(UserError, match="not divisible by the 8 devices"):
    validate_config(c, 8)


def _script(devices, code, timeout=600):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=timeout)
  assert p.returncode == 0, p.stderr[-3000:]
  return json.loads(p.stdout.strip().splitlines()[-1])


TP = ((r"attn/qkv/kernel$", ("fsdp", "tensor")), (r"attn/proj/kernel$", ("tensor", "fsdp")),
      (r"mlp/fc1/kernel$", ("fsdp", "tensor")), (r"mlp/fc2/kernel$", ("tensor", "fsdp")),
      (".*", "fsdp"))
MESHES = {  # config.sharding of each case
    "dp": dict(mesh=(("data", -1),), rules=(), fsdp_min_size=256),
    "fsdp8": dict(mesh=(("fsdp", -1),), rules=((".*", "fsdp"),), fsdp_min_size=256),
    "fsdp4_tp2": dict(mesh=(("fsdp", 4), ("tensor", 2)), rules=TP, fsdp_min_size=256),
}


def _overrides(sharding):
  return tuple(f"sharding.{k}={v!r}" for k, v in sharding.items())


COMMON = ("progress_bar=False", "total_steps=20", "log_every_steps=1", "eval_every_steps=20",
          "batch_size=64", "eval_batch_size=40", "checkpoint_every_steps=20")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("sharding")
  out = {}
  for name, mesh in MESHES.items():
    out[name] = str(root / name)
    run_main(out[name], *COMMON, *_overrides(mesh), devices=8)
  return out


def _losses(workdir):
  return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


@pytest.mark.slow
def test_fsdp_and_tensor_parallel_give_the_data_parallel_losses(runs):
  ref = _losses(runs["dp"])
  assert sorted(ref) == list(range(1, 21))
  for name in ("fsdp8", "fsdp4_tp2"):
    mine = _losses(runs[name])
    rel = max(abs(mine[s] - ref[s]) / abs(ref[s]) for s in ref)
    assert rel < 1e-5, (name, rel)


SHARDS = """
import json, jax
from vitjax.train import build_run
import configs.quickstart as q
c = q.get_config()
c.batch_size, c.eval_batch_size = 64, 40
c.sharding.update({sharding!r})
state = build_run(c).init_state()
get = lambda t: [l for p, l in jax.tree_util.tree_leaves_with_path(t)
                 if jax.tree_util.keystr(p).endswith("['block_0']['attn']['qkv']['kernel']")][0]
q, mu = get(state.params), get(state.opt_state)
print(json.dumps(dict(shard=list(q.addressable_shards[0].data.shape), shape=list(q.shape),
                      mu_shard=list(mu.addressable_shards[0].data.shape))))
"""


@pytest.mark.slow
def test_parameters_and_optimizer_state_are_really_sharded():
  got = {name: _script(8, SHARDS.format(sharding=mesh)) for name, mesh in MESHES.items()}
  d, h3 = got["dp"]["shape"]  # the quickstart's qkv kernel [64, 192]
  assert got["dp"]["shard"] == [d, h3]
  assert got["fsdp8"]["shard"] == [d, h3 // 8] and got["fsdp8"]["mu_shard"] == [d, h3 // 8]
  assert got["fsdp4_tp2"]["shard"] == [d // 4, h3 // 2] == got["fsdp4_tp2"]["mu_shard"]


PLAN = """
import json, sys
from vitjax.tools.plan import plan
import configs.vit_b16 as b
c = b.get_config()
c.batch_size, c.eval_batch_size = 16, 16
if sys.argv[-1] == 'fsdp':
  c.sharding.mesh, c.sharding.rules = (('fsdp', -1),), (('.*', 'fsdp'),)
print(json.dumps(plan(c)))
"""


@pytest.mark.slow
def test_fsdp_cuts_the_compiled_steps_argument_bytes_of_vit_b16():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  plans = {}
  for mode in ("dp", "fsdp"):
    p = subprocess.run([sys.executable, "-c", PLAN, mode], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    plans[mode] = json.loads(p.stdout.strip().splitlines()[-1])
  dp, fsdp = plans["dp"], plans["fsdp"]
  assert dp["params"] == dp["params_total"] == 4 * 86_567_656  # ViT-B/16, float32
  assert fsdp["params"] <= dp["params"] / 7.5
  assert fsdp["step_arguments"] <= dp["step_arguments"] / 6, (fsdp, dp)


RESTORE = """
import json, sys, numpy as np, jax
from vitjax import checkpoint as ck
from vitjax.train import build_run
from vitjax.runs import read_config
c = read_config(sys.argv[1])
if int(sys.argv[2]) > 1:
  c.sharding.mesh = (('fsdp', -1),)
else:
  c.sharding.mesh, c.sharding.rules = (('data', -1),), ()
run = build_run(c)
state = ck.Checkpointer(sys.argv[1]).restore(run.init_state())
leaf = jax.tree.leaves(state.params)[0]
np.savez(sys.argv[3], *[np.asarray(x) for x in jax.tree.leaves(state.params)])
print(json.dumps(dict(step=int(state.step), devices=len(leaf.sharding.device_set))))
"""


@pytest.mark.slow
def test_a_checkpoint_written_under_fsdp8_restores_onto_4_and_1_devices(runs, tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  loaded = {}
  for n in (8, 4, 1):
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
    out = str(tmp_path / f"p{n}.npz")
    p = subprocess.run([sys.executable, "-c", RESTORE, runs["fsdp8"], str(n), out],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert info["step"] == 20
    loaded[n] = np.load(out)
  for n in (4, 1):
    assert loaded[n].files == loaded[8].files
    for k in loaded[8].files:
      np.testing.assert_array_equal(loaded[n][k], loaded[8][k])


@pytest.mark.slow
def test_two_processes_with_fsdp_equal_one_process(tmp_path):
  overrides = COMMON + _overrides(MESHES["fsdp8"])
  single = str(tmp_path / "single")
  run_main(single, *overrides, devices=4)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  wd, port = str(tmp_path / "pair"), free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "vitjax.main", f"--config={ROOT}/configs/quickstart.py",
       f"--workdir={wd}", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}"] + [f"--config.{o}" for o in overrides],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
  a, b = _losses(single), _losses(wd)
  assert sorted(a) == sorted(b) == list(range(1, 21))
  assert max(abs(a[s] - b[s]) / abs(a[s]) for s in a) < 1e-5
  assert final_eval(wd)["eval/accuracy"] == final_eval(single)["eval/accuracy"]


@pytest.mark.slow
def test_sigkill_under_fsdp_then_the_same_command_resumes_exactly(runs, tmp_path):
  overrides = COMMON[:-1] + ("checkpoint_every_steps=3",) + _overrides(MESHES["fsdp8"])
  wd = str(tmp_path / "wd")
  seconds = float(np.random.RandomState().uniform(0.5, 4.0))
  kill_after(wd, list(overrides), seconds, devices=8)
  run_main(wd, *overrides, devices=8)
  mine, ref = final_eval(wd), final_eval(runs["fsdp8"])
  assert mine["eval/accuracy"] == ref["eval/accuracy"], seconds
  assert mine["eval/loss"] == pytest.approx(ref["eval/loss"], rel=1e-6), seconds
