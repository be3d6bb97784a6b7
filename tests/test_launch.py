"""launch.sh and resnet_jax.sweep: dry runs (local, parallel, GPUs, TPU, SLURM), errors, and real
re-launches that skip finished runs and resume unfinished ones (tiny nets on the real CIFAR-10 subset).
"""
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from resnet_jax import run_dir, sweep

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = str(REPO / "launch.sh")
DEGRADATION = "configs/cifar10_degradation.py"
FULL_SWEEP = ["plain-20", "plain-32", "plain-44", "plain-56", "resnet-20", "resnet-32", "resnet-44", "resnet-56",
              "resnet-110"]
QUICK_SWEEP = ["plain-20", "plain-56", "resnet-20", "resnet-56"]

# A two-run sweep of depth-8 nets, written to a temporary file by the tests that train.
TINY_SWEEP = '''"""Two tiny runs for launch tests."""
from resnet_jax.config_args import load_config_module, parse_config_arg

cifar10 = load_config_module({cifar10!r})
SWEEP_NAME = "tiny"


def get_sweep(arg=None):
    parse_config_arg(arg, dict(run=""))
    return ["plain-8", "resnet-8"]


def get_config(arg=None):
    a = parse_config_arg(arg, dict(run=""))
    kind, depth = a["run"].split("-")
    c = cifar10.get_config(f"depth={{depth}},residual={{kind == 'resnet'}}")
    c.batch_size = 16
    c.num_train_steps = 8
    c.log_every = 4
    c.eval_every = 4
    c.checkpoint_every = 4
    c.eval_batch_size = 200
    c.wandb.group = "tiny"
    return c
'''


def env_for(**extra):
    env = dict(os.environ)
    env["RESNET_JAX_PYTHON"] = sys.executable
    env["CUDA_VISIBLE_DEVICES"] = ""  # deterministic: no GPUs unless a test names them
    env.pop("VIRTUAL_ENV", None)
    env.update(extra)
    return env


def launch(*args, env=None, timeout=120, check=True):
    proc = subprocess.run([LAUNCH, *args], cwd=REPO, env=env or env_for(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"launch.sh {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def commands(stdout):
    """The command lines of a dry run (comments start with '#'), split as the shell would."""
    return [shlex.split(line) for line in stdout.splitlines() if line.strip() and not line.startswith("#")]


def split_env(argv):
    env = {}
    while argv and "=" in argv[0] and not argv[0].startswith("-") and "/" not in argv[0].split("=")[0]:
        key, _, value = argv[0].partition("=")
        env[key] = value
        argv = argv[1:]
    return env, argv


def flag(argv, name):
    values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def fake_run(directory, num_train_steps=500, checkpoints=(), metrics_steps=()):
    """A run directory as resnet_jax.main leaves it, without training."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"num_train_steps": num_train_steps, "name": os.path.basename(directory)}, f)
    for step in checkpoints:
        os.makedirs(os.path.join(directory, "checkpoints", str(step), "state"))
    with open(os.path.join(directory, "metrics.jsonl"), "w") as f:
        for step in metrics_steps:
            f.write(json.dumps({"step": step, "train/error": 0.5}) + "\n")


# ----------------------------------------------------------------------------- dry runs: local


def test_dry_run_local_sweep_prints_one_command_per_run(tmp_path):
    workdir = tmp_path / "fig6"
    proc = launch(DEGRADATION, "--workdir", str(workdir), "--dry-run", "--config.num_train_steps=100",
                  "--config.data_dir=/data/tfds")
    cmds = commands(proc.stdout)
    assert len(cmds) == len(FULL_SWEEP)
    for name, argv in zip(FULL_SWEEP, cmds):
        env, argv = split_env(argv)
        assert env == {}  # no GPUs: nothing in the environment
        assert argv[:3] == [sys.executable, "-m", "resnet_jax.main"]
        assert flag(argv, "--config") == f"{DEGRADATION}:run={name}"
        assert flag(argv, "--workdir") == str(workdir / name)
        assert argv[-2:] == ["--config.num_train_steps=100", "--config.data_dir=/data/tfds"]
    assert "one after another" in proc.stdout
    assert not workdir.exists(), "a dry run must not create anything"


def test_dry_run_quick_sweep_single_run_and_single_config(tmp_path):
    cmds = commands(launch(f"{DEGRADATION}:quick", "--workdir", str(tmp_path), "--dry-run").stdout)
    assert [flag(c, "--config") for c in cmds] == [f"{DEGRADATION}:quick,run={n}" for n in QUICK_SWEEP]
    # run=NAME picks one run of a sweep, still in WORKDIR/NAME.
    (cmd,) = commands(launch(f"{DEGRADATION}:quick,run=plain-56", "--workdir", str(tmp_path), "--dry-run").stdout)
    assert flag(cmd, "--workdir") == str(tmp_path / "plain-56")
    # A config without get_sweep is one run, in WORKDIR itself; default workdir runs/<run name>.
    (cmd,) = commands(launch("configs/cifar10.py:depth=8,residual=false", "--workdir", str(tmp_path / "p8"),
                             "--dry-run").stdout)
    assert flag(cmd, "--config") == "configs/cifar10.py:depth=8,residual=false"
    assert flag(cmd, "--workdir") == str(tmp_path / "p8")
    # Default workdirs (only the names: real runs there may make this launch skip some).
    assert " in runs/plain-8" in launch("configs/cifar10.py:depth=8,residual=false", "--dry-run").stdout
    assert " in runs/cifar10-degradation-quick" in launch(f"{DEGRADATION}:quick", "--dry-run").stdout


def test_dry_run_parallel_on_cpu(tmp_path):
    proc = launch(f"{DEGRADATION}:quick", "--workdir", str(tmp_path), "--parallel", "2", "--dry-run")
    cmds = commands(proc.stdout)
    assert len(cmds) == 4 and all(split_env(c)[0] == {} for c in cmds)
    assert "2 at a time" in proc.stdout
    slots = [line.rsplit("slot ", 1)[1] for line in proc.stdout.splitlines()
             if line.startswith("# ") and ", slot " in line]
    assert slots == ["0", "1", "0", "1"]


def test_dry_run_multi_gpu_host(tmp_path):
    def gpus_of(*args, env=None):
        cmds = commands(launch(f"{DEGRADATION}:quick", "--workdir", str(tmp_path), "--dry-run", *args,
                               env=env).stdout)
        return [split_env(c)[0].get("CUDA_VISIBLE_DEVICES") for c in cmds]

    assert gpus_of("--gpus", "0,1,2,3") == ["0", "1", "2", "3"]  # one run per GPU
    assert gpus_of("--gpus", "0,1,2,3", "--data-parallel") == ["0,1,2,3"] * 4  # all GPUs, one run at a time
    assert gpus_of("--gpus", "0,1,2,3", "--parallel", "2") == ["0,1", "2,3", "0,1", "2,3"]
    assert gpus_of("--gpus", "0,1") == ["0", "1", "0", "1"]
    # Without --gpus, CUDA_VISIBLE_DEVICES says which GPUs there are.
    assert gpus_of(env=env_for(CUDA_VISIBLE_DEVICES="2,3")) == ["2", "3", "2", "3"]
    # One run on a 4-GPU host gets all of them (data parallel).
    (cmd,) = commands(launch("configs/cifar10.py", "--workdir", str(tmp_path), "--gpus", "0,1,2,3",
                             "--dry-run").stdout)
    assert split_env(cmd)[0] == {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}


def test_dry_run_runs_per_gpu_packs_runs_onto_each_gpu(tmp_path):
    """--runs-per-gpu K: K runs at once per GPU, each capped at 0.9/K of its memory, allocating on demand."""
    proc = launch(DEGRADATION, "--workdir", str(tmp_path), "--gpus", "0,1", "--runs-per-gpu", "3", "--dry-run")
    cmds = commands(proc.stdout)
    assert len(cmds) == len(FULL_SWEEP)
    envs = [split_env(c)[0] for c in cmds]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1"] * 4 + ["0"]  # fill every GPU, then again
    assert all(e["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.30" for e in envs)
    assert all(e["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" for e in envs)
    assert all(split_env(c)[1][:3] == [sys.executable, "-m", "resnet_jax.main"] for c in cmds)
    assert "6 at a time" in proc.stdout and "3 runs sharing each GPU" in proc.stdout
    slots = [line.rsplit("slot ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("# ") and ", slot " in line]
    assert slots == ["0", "1", "2", "3", "4", "5", "0", "1", "2"]
    # One GPU, the 4-run quick sweep: all four at once on GPU 0.
    cmds = commands(launch(f"{DEGRADATION}:quick", "--workdir", str(tmp_path), "--gpus", "0", "--runs-per-gpu=4",
                           "--dry-run").stdout)
    assert [split_env(c)[0] for c in cmds] == [{"CUDA_VISIBLE_DEVICES": "0", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.22",
                                                "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}] * 4
    # K = 1 is the default: nothing in the environment but the GPU.
    cmds = commands(launch(f"{DEGRADATION}:quick", "--workdir", str(tmp_path), "--gpus", "0", "--dry-run").stdout)
    assert [split_env(c)[0] for c in cmds] == [{"CUDA_VISIBLE_DEVICES": "0"}] * 4


# ----------------------------------------------------------------------------- dry runs: TPU, SLURM


def test_dry_run_tpu_pod():
    proc = launch(f"{DEGRADATION}:quick", "--tpu", "my-pod", "--zone", "us-central2-b", "--project", "proj",
                  "--remote-dir", "~/resnet_jax", "--workdir", "/mnt/shared/fig6", "--dry-run",
                  "--config.model.dtype=bfloat16", "--config.wandb.tags=('a b',)",
                  env=env_for(RESNET_JAX_PYTHON="/nonexistent/python"))  # needs no local Python
    (cmd,) = commands(proc.stdout)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod"]
    assert "--zone=us-central2-b" in cmd and "--project=proj" in cmd and "--worker=all" in cmd
    remote = flag(cmd, "--command")
    cd, _, rest = remote.partition(" && ")
    assert cd == "cd ~/resnet_jax"
    env, inner = split_env(shlex.split(rest))
    assert env == {"RESNET_JAX_DISTRIBUTED": "1"}
    assert inner == ["./launch.sh", f"{DEGRADATION}:quick", "--workdir", "/mnt/shared/fig6",
                     "--config.model.dtype=bfloat16", "--config.wandb.tags=('a b',)"]


def test_dry_run_slurm_script(tmp_path):
    workdir = tmp_path / "fig6"
    proc = launch(DEGRADATION, "--workdir", str(workdir), "--slurm", "--partition=gpu", "--nodes=2",
                  "--gres=gpu:4", "--time=12:00:00", "--parallel", "3", "--dry-run", "--config.num_train_steps=100")
    out = proc.stdout
    sbatch = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("#SBATCH ")]
    assert "--array=0-8%3" in sbatch  # one array element per run, at most 3 at once
    assert "--ntasks-per-node=4" in sbatch  # one task per GPU
    assert {"--partition=gpu", "--nodes=2", "--gres=gpu:4", "--time=12:00:00"} <= set(sbatch)
    assert "--signal=TERM@120" in sbatch
    assert f"would write {workdir}/slurm/" in out
    assert "srun --kill-on-bad-exit=1" in out and "--config.num_train_steps=100" in out
    assert not workdir.exists()

    # The script is valid bash and array element i runs sweep run i (srun stubbed to print its argv).
    script = tmp_path / "job.sh"
    script.write_text(out.split("\n", 1)[1])
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    (stub / "srun").chmod(0o755)
    env = env_for(PATH=f"{stub}:{os.environ['PATH']}", SLURM_ARRAY_TASK_ID="4", SLURM_NTASKS="8",
                  SLURM_JOB_NUM_NODES="2")
    ran = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=True)
    argv = ran.stdout.splitlines()[1:]
    assert argv[:4] == ["--kill-on-bad-exit=1", sys.executable, "-m", "resnet_jax.main"]
    assert flag(argv, "--config") == f"{DEGRADATION}:run=resnet-20"
    assert flag(argv, "--workdir") == str(workdir / "resnet-20")

    # Defaults: one GPU per node, so one task per node.
    out = launch("configs/cifar10.py", "--workdir", str(workdir), "--slurm", "-p", "gpu", "--dry-run").stdout
    assert "#SBATCH --ntasks-per-node=1" in out and "#SBATCH --gpus-per-node=1" in out
    assert "#SBATCH -p gpu" in out and "#SBATCH --array=0-0" in out


def test_dry_run_skips_finished_and_resumes_partial_runs(tmp_path):
    workdir = tmp_path / "quick"
    fake_run(workdir / "plain-20", checkpoints=(400, 500))                   # finished
    fake_run(workdir / "plain-56", checkpoints=(100, 200))                   # resumes at 200
    os.makedirs(workdir / "plain-56" / "checkpoints" / "300.orbax-checkpoint-tmp-1700000000")  # half-written save
    fake_run(workdir / "resnet-20", metrics_steps=(100, 500))                # finished (checkpoints deleted)
    proc = launch(f"{DEGRADATION}:quick", "--workdir", str(workdir), "--dry-run")
    assert [flag(c, "--workdir") for c in commands(proc.stdout)] == [
        str(workdir / "plain-56"), str(workdir / "resnet-56")]
    assert "# skip plain-20: finished (500/500 steps)" in proc.stdout
    assert "# skip resnet-20: finished (500/500 steps)" in proc.stdout
    assert "# plain-56: resume from step 200/500" in proc.stdout
    assert "# resnet-56: new" in proc.stdout
    # Longer runs than before: the finished runs become resumable.
    proc = launch(f"{DEGRADATION}:quick", "--workdir", str(workdir), "--dry-run", "--config.num_train_steps=1000")
    assert len(commands(proc.stdout)) == 4 and "# plain-20: resume from step 500/1000" in proc.stdout
    assert "# resnet-20: new" in proc.stdout  # no checkpoint to resume from
    # SLURM leaves finished runs out of the array.
    out = launch(f"{DEGRADATION}:quick", "--workdir", str(workdir), "--slurm", "--dry-run").stdout
    assert "#SBATCH --array=0-1" in out and "NAMES=(plain-56 resnet-56)" in out
    # Everything finished: nothing to do.
    fake_run(workdir / "plain-56", checkpoints=(500,))
    fake_run(workdir / "resnet-56", checkpoints=(500,))
    proc = launch(f"{DEGRADATION}:quick", "--workdir", str(workdir), "--dry-run")
    assert commands(proc.stdout) == [] and "nothing to do" in proc.stdout


# ----------------------------------------------------------------------------- errors


def _bin_without(tmp_path, *missing):
    """A PATH with the few programs launch.sh needs, but not `missing` (gcloud, sbatch)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for tool in ("bash", "env", "dirname", "date", "mkdir", "mktemp", "rm", "cat", "tee", "tr", "paste", "ls"):
        if tool not in missing and not (bindir / tool).exists():
            path = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
            if path:
                (bindir / tool).symlink_to(path)
    return str(bindir)


@pytest.mark.parametrize("args, message", [
    (["configs/nope.py"], "unknown config 'configs/nope.py'"),
    (["configs/cifar10.py", "--bogus"], "unknown option '--bogus'"),
    (["configs/cifar10.py", "stray"], "unexpected argument 'stray'"),
    (["configs/cifar10.py", "--config.no_such_field=1", "--dry-run"], "has no field 'no_such_field'"),
    (["configs/cifar10.py", "--config.model.no_such=1", "--dry-run"], "model has no field 'no_such'"),
    (["configs/cifar10.py", "--config.num_train_steps=lots", "--dry-run"], "num_train_steps"),
    (["configs/cifar10.py:depth=abc", "--dry-run"], "expected a number"),
    ([f"{DEGRADATION}:run=plain-99", "--dry-run"], "not in this sweep"),
    (["configs/cifar10.py", "--parallel", "0"], "--parallel needs a positive number"),
    (["configs/cifar10.py", "--workdir"], "--workdir needs a value"),
    (["configs/cifar10.py", "--tpu", "pod"], "--tpu needs --zone"),
    (["configs/cifar10.py", "--zone", "z"], "go with --tpu"),
    (["configs/cifar10.py", "--tpu", "pod", "--zone", "z", "--slurm"], "do not go together"),
    (["configs/cifar10.py", "--slurm", "--gpus", "0,1"], "are for local runs"),
    (["configs/cifar10.py", "--data-parallel", "--parallel", "2", "--gpus", "0,1", "--dry-run"],
     "cannot go with --parallel"),
    (["configs/cifar10.py", "--parallel", "3", "--gpus", "0,1", "--dry-run"], "needs at least 3 GPUs"),
    (["configs/cifar10.py", "--runs-per-gpu", "2", "--dry-run"], "--runs-per-gpu shares GPUs between runs"),
    (["configs/cifar10.py", "--runs-per-gpu", "0"], "--runs-per-gpu needs a positive number"),
    (["configs/cifar10.py", "--slurm", "--runs-per-gpu", "2"], "are for local runs"),
    ([], "no config given"),
])
def test_clear_errors(args, message):
    proc = launch(*args, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_gcloud_and_sbatch(tmp_path):
    env = env_for(PATH=_bin_without(tmp_path, "gcloud", "sbatch"))
    proc = launch("configs/cifar10.py", "--tpu", "pod", "--zone", "z", env=env, check=False)
    assert proc.returncode == 2 and "gcloud not found" in proc.stderr
    proc = launch("configs/cifar10.py", "--workdir", str(tmp_path / "w"), "--slurm", env=env, check=False)
    assert proc.returncode == 2 and "sbatch not found" in proc.stderr
    assert not (tmp_path / "w").exists()
    # The dry runs need neither.
    assert launch("configs/cifar10.py", "--tpu", "pod", "--zone", "z", "--dry-run", env=env).returncode == 0
    assert launch("configs/cifar10.py", "--slurm", "--dry-run", env=env).returncode == 0


def test_bad_python_is_a_clear_error():
    proc = launch("configs/cifar10.py", "--dry-run", env=env_for(RESNET_JAX_PYTHON="/nonexistent/python"),
                  check=False)
    assert proc.returncode == 2 and "RESNET_JAX_PYTHON" in proc.stderr


VENV_PYTHON_STUB = """#!/bin/bash
echo "venv-python $*" >> "$STUB_LOG"
case "$1 $2" in
  "-c "*) [[ -f "$STUB_DIR/installed" ]] ;;
  "-m pip") touch "$STUB_DIR/installed" ;;
  *) exec "$REAL_PYTHON" "$@" ;;
esac
"""
PYTHON3_STUB = """#!/bin/bash
echo "python3 $*" >> "$STUB_LOG"
if [[ "$1 $2" == "-m venv" ]]; then mkdir -p "$3/bin" && cp "$STUB_DIR/venv-python" "$3/bin/python"; fi
"""


def test_first_use_creates_the_venv_and_installs_the_project(tmp_path):
    """No RESNET_JAX_PYTHON, no active venv, no .venv: `python3 -m venv .venv && pip install -e .` once."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(LAUNCH, repo / "launch.sh")
    shutil.copytree(REPO / "configs", repo / "configs")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, text in (("python3", PYTHON3_STUB), ("venv-python", VENV_PYTHON_STUB)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    log = tmp_path / "log"
    env = env_for(PATH=f"{stubs}:{os.environ['PATH']}", STUB_LOG=str(log), STUB_DIR=str(stubs),
                  REAL_PYTHON=sys.executable, RESNET_JAX_EXTRAS="")
    del env["RESNET_JAX_PYTHON"]

    def run():
        return subprocess.run([str(repo / "launch.sh"), "configs/cifar10.py", "--dry-run"], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=60, check=True)

    (cmd,) = commands(run().stdout)
    assert cmd[0] == str(repo / ".venv" / "bin" / "python")
    calls = log.read_text().splitlines()
    assert f"python3 -m venv {repo}/.venv" in calls
    assert f"venv-python -m pip install -e {repo}" in calls
    log.write_text("")
    (cmd,) = commands(run().stdout)  # second time: nothing to install
    assert cmd[0] == str(repo / ".venv" / "bin" / "python")
    assert not any(c.startswith("python3") or " pip " in c for c in log.read_text().splitlines())


def test_active_venv_is_used(tmp_path):
    venv = tmp_path / "venv"  # another name for the environment running the tests
    venv.symlink_to(os.path.dirname(os.path.dirname(sys.executable)))
    env = env_for(VIRTUAL_ENV=str(venv))
    del env["RESNET_JAX_PYTHON"]
    (cmd,) = commands(launch("configs/cifar10.py", "--dry-run", env=env).stdout)
    assert cmd[0] == str(venv / "bin" / "python")


def test_help():
    out = launch("--help").stdout
    for option in ("--workdir", "--parallel", "--data-parallel", "--runs-per-gpu", "--tpu", "--zone", "--slurm",
                   "--dry-run"):
        assert option in out


# ----------------------------------------------------------------------------- resnet_jax.sweep


def test_run_status(tmp_path):
    run = str(tmp_path / "r")
    assert sweep.run_status(run, 10).state == "new"
    fake_run(run, num_train_steps=10, checkpoints=(4,), metrics_steps=(2, 4, 6))
    assert sweep.run_status(run) == sweep.RunStatus("partial", 4, 10)  # checkpoints count, not metrics
    os.makedirs(os.path.join(run, "checkpoints", "10.orbax-checkpoint-tmp-1"))
    assert run_dir.checkpoint_steps(run) == [4]
    os.makedirs(os.path.join(run, "checkpoints", "10"))
    assert sweep.run_status(run) == sweep.RunStatus("finished", 10, 10)
    assert sweep.run_status(run, 20).state == "partial"  # launched longer this time
    assert sweep.run_status(run, 10, resume=False).state == "restart"
    with open(os.path.join(run, "metrics.jsonl"), "a") as f:
        f.write('{"step": 12, "train/err')  # torn last line
    assert run_dir.last_metrics_step(run) == 6


def test_assign_slots():
    assert sweep.assign_slots(3, []) == [(0, ""), (0, ""), (0, "")]
    assert sweep.assign_slots(3, [], parallel=2) == [(0, ""), (1, ""), (0, "")]
    assert sweep.assign_slots(5, ["0", "1", "2", "3"]) == [(0, "0"), (1, "1"), (2, "2"), (3, "3"), (0, "0")]
    assert sweep.assign_slots(2, ["0", "1", "2", "3"]) == [(0, "0,1"), (1, "2,3")]
    assert sweep.assign_slots(1, ["0", "1", "2", "3"]) == [(0, "0,1,2,3")]
    assert sweep.assign_slots(2, ["0", "1", "2", "3"], data_parallel=True) == [(0, "0,1,2,3")] * 2
    assert sweep.assign_slots(4, ["0", "1", "2", "3"], parallel=2) == [(0, "0,1"), (1, "2,3")] * 2
    assert sweep.assign_slots(0, ["0"]) == []
    assert sweep.assign_slots(5, ["0"], runs_per_gpu=3) == [(0, "0"), (1, "0"), (2, "0"), (0, "0"), (1, "0")]
    assert sweep.assign_slots(5, ["0", "1"], runs_per_gpu=2) == [(0, "0"), (1, "1"), (2, "0"), (3, "1"), (0, "0")]
    assert sweep.assign_slots(4, ["0", "1", "2", "3"], parallel=2, runs_per_gpu=2) == [
        (0, "0,1"), (1, "2,3"), (2, "0,1"), (3, "2,3")]
    assert sweep.memory_fraction(1) == "" and sweep.memory_fraction(2) == "0.45" and sweep.memory_fraction(4) == "0.22"
    with pytest.raises(sweep.LaunchError):
        sweep.assign_slots(2, [], runs_per_gpu=2)
    with pytest.raises(sweep.LaunchError):
        sweep.assign_slots(4, ["0"], parallel=2)


def test_list_runs_and_gpus_per_node():
    runs, is_sweep = sweep.list_runs(f"{REPO}/{DEGRADATION}:with1202")
    assert is_sweep and [r.name for r in runs] == FULL_SWEEP + ["resnet-1202"]
    assert runs[0].config == f"{REPO}/{DEGRADATION}:with1202,run=plain-20"
    runs, is_sweep = sweep.list_runs(f"{REPO}/configs/cifar10.py:depth=56")
    assert not is_sweep and runs[0].config == f"{REPO}/configs/cifar10.py:depth=56"
    assert sweep.gpus_per_node(["--gres=gpu:a100:8"]) == 8
    assert sweep.gpus_per_node(["--gpus-per-node=2"]) == 2
    assert sweep.gpus_per_node(["-p", "gpu"]) == 1
    config = sweep.resolve_config(f"{REPO}/{DEGRADATION}:quick,run=plain-56",
                                  ["--config.num_train_steps=7", "--config.model.depth=8"])
    assert (config.num_train_steps, config.model.depth, config.batch_size) == (7, 8, 64)


# ----------------------------------------------------------------------------- real runs


def _metrics(directory):
    with open(os.path.join(directory, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow  # long end-to-end: `pytest -m slow` (docs/testing.md)
def test_relaunch_skips_finished_and_resumes_unfinished(tmp_path, tfds_data_dir):
    config = tmp_path / "tiny_sweep.py"
    config.write_text(TINY_SWEEP.format(cifar10=str(REPO / "configs" / "cifar10.py")))
    workdir = tmp_path / "sweep"
    args = [str(config), "--workdir", str(workdir), f"--config.data_dir={tfds_data_dir}"]
    first = launch(*args, timeout=300)
    assert first.stdout.count("first step") == 2
    for name in ("plain-8", "resnet-8"):
        assert sweep.run_status(str(workdir / name)).state == "finished"
        assert (workdir / name / "launch.log").read_text().count("first step") == 1
    before = _metrics(workdir / "resnet-8")
    assert [r["step"] for r in before] == [4, 8]

    # resnet-8 loses its last checkpoint, as if stopped at step 4.
    subprocess.run(["rm", "-r", str(workdir / "resnet-8" / "checkpoints" / "8")], check=True)
    again = launch(*args, timeout=300)
    assert "# skip plain-8: finished (8/8 steps)" in again.stdout
    assert "resnet-8: resume from step 4/8" in again.stdout
    assert "resuming from step 4" in again.stdout
    assert again.stdout.count("first step") == 1  # plain-8 did not start at all
    after = _metrics(workdir / "resnet-8")
    assert [r["step"] for r in after] == [4, 8]  # no duplicated records
    assert after[1]["train/loss"] == pytest.approx(before[1]["train/loss"], rel=1e-5)  # exact resume
    assert run_dir.checkpoint_steps(str(workdir / "resnet-8"))[-1] == 8

    last = launch(*args)
    assert "nothing to do" in last.stdout and "first step" not in last.stdout


def test_sigterm_saves_and_relaunch_resumes(tmp_path, tfds_data_dir):
    workdir = tmp_path / "run"
    args = ["configs/cifar10.py:depth=8", "--workdir", str(workdir), f"--config.data_dir={tfds_data_dir}",
            "--config.batch_size=16", "--config.eval_batch_size=200", "--config.log_every=5"]
    proc = subprocess.Popen([LAUNCH, *args, "--config.num_train_steps=100000"], cwd=REPO, env=env_for(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        for line in proc.stdout:
            if "step 5/" in line or time.time() > deadline:
                break
        proc.send_signal(signal.SIGTERM)  # to launch.sh, which forwards it to the run
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out
    assert "checkpoint saved" in out and "Run the same command again to resume" in out
    status = sweep.run_status(str(workdir))
    assert status.state == "partial" and status.done >= 5

    total = status.done + 4
    resumed = launch(*args, f"--config.num_train_steps={total}", timeout=300)
    assert f"resume from step {status.done}/{total}" in resumed.stdout
    assert f"resuming from step {status.done}" in resumed.stdout
    assert sweep.run_status(str(workdir)).state == "finished"


def test_a_failure_every_run_shares_stops_the_sweep_with_one_message(tmp_path):
    config = tmp_path / "tiny_sweep.py"
    config.write_text(TINY_SWEEP.format(cifar10=str(REPO / "configs" / "cifar10.py")))
    empty = tmp_path / "no_data"
    empty.mkdir()
    for extra in ([], ["--parallel", "2"]):
        proc = launch(str(config), "--workdir", str(tmp_path / f"sweep{len(extra)}"), f"--config.data_dir={empty}",
                      *extra, env=env_for(RESNET_JAX_OFFLINE="1"), timeout=300, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 3, out
        assert 1 <= out.count("cifar10 is not prepared in") <= 2, out  # at most once per slot
        if not extra:  # one after another: the second run never starts
            assert out.count("cifar10 is not prepared in") == 1 and "resnet-8" not in proc.stdout, out
            assert "1 run(s) not started" in proc.stderr, out
        assert "failed for a reason every run shares" in proc.stderr and "Traceback" not in out, out


def test_a_failure_of_one_run_lets_the_others_go_on(tmp_path, tfds_data_dir):
    config = tmp_path / "tiny_sweep.py"
    sweep_text = TINY_SWEEP.format(cifar10=str(REPO / "configs" / "cifar10.py"))
    config.write_text(sweep_text.replace('    c.wandb.group = "tiny"',
                                         '    c.wandb.group = "tiny"\n'
                                         '    if kind == "plain":\n'
                                         '        c.num_train_steps = 0  # refused by config_checks: this run only'))
    workdir = tmp_path / "sweep"
    proc = launch(str(config), "--workdir", str(workdir), f"--config.data_dir={tfds_data_dir}", timeout=300,
                  check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "plain-8: exit code 1; the other runs go on" in proc.stdout
    assert sweep.run_status(str(workdir / "resnet-8")).state == "finished"
    assert f"1 of 2 run(s) failed: plain-8 (exit 1, log: {workdir}/plain-8/launch.log)" in proc.stderr
