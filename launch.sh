#!/usr/bin/env bash
# One entry point for runs and sweeps: local (CPU, one or many GPUs), TPU VM pods, SLURM.
# The decisions (which runs, finished or not, which GPUs) live in resnet_jax/sweep.py; this
# script parses arguments, finds or creates the Python environment, and starts processes.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROG="launch.sh"

usage() {
  cat <<'EOF'
Usage: ./launch.sh CONFIG[:ARGS] [options] [--config.FIELD=VALUE ...]

Runs one config, or every run of a sweep config (one that defines get_sweep), each sweep run in
WORKDIR/<run-name>; a single config runs in WORKDIR itself. Re-launching skips finished runs and
resumes unfinished ones from their latest checkpoint. A failure every run would share (a bad
flag, missing data, a broken install) stops the sweep at the first run that meets it, with its one
message; a failure of one run lets the others go on, and the summary names each failed run and
its log.

  ./launch.sh configs/cifar10_degradation.py:quick --config.data_dir=../shared/data/tfds
  ./launch.sh configs/cifar10.py:depth=56,residual=false --workdir runs/plain-56
  ./launch.sh configs/cifar10_degradation.py --parallel 2 --dry-run

Options:
  --workdir DIR       where runs go (default runs/<sweep-name>, or runs/<run-name> for one config)
  --config.F=V        override a config field in every run (any number of them)
  --dry-run           print exactly what would run (commands, or the sbatch script); run nothing
  -h, --help          this text

Local (the default):
  --parallel N        run N at once (default: sequential; on a multi-GPU host one run per GPU)
  --data-parallel     on a multi-GPU host, give all GPUs to one run at a time
  --runs-per-gpu K    pack K runs onto each GPU at once (small CIFAR nets do not fill a modern
                      GPU); each gets XLA_PYTHON_CLIENT_MEM_FRACTION=0.9/K and allocates on demand
                      (XLA_PYTHON_CLIENT_PREALLOCATE=false). See docs/performance.md
  --gpus LIST         GPU ids to use, e.g. 0,1,2,3, or none (default: $CUDA_VISIBLE_DEVICES,
                      else every GPU nvidia-smi lists)

TPU VM pod:
  --tpu NAME --zone ZONE [--project P] [--remote-dir DIR]
                      run this same launch on every worker (gcloud compute tpus tpu-vm ssh
                      --worker=all); the repository must be at --remote-dir on each worker
                      (default: the same path as here) and WORKDIR on storage all workers share

SLURM:
  --slurm [SBATCH OPTIONS]
                      write WORKDIR/slurm/<name>-<time>.sh (a job array: one element per unfinished
                      run, one task per GPU, srun) and submit it with sbatch. Options that follow
                      (e.g. --partition=gpu --nodes=2 --gres=gpu:4 --time=12:00:00, -p gpu) go into
                      the script; --parallel N caps how many array elements run at once.

Environment: RESNET_JAX_PYTHON=/path/to/python uses that interpreter; else an active virtual
environment that has the project; else REPO/.venv, created and installed on first use
(RESNET_JAX_EXTRAS picks pip extras, e.g. gpu or tpu; by default gpu where nvidia-smi exists,
tpu on a TPU VM).
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 2; }
note() { echo "$PROG: $*" >&2; }

# ------------------------------------------------------------------------------ arguments
CONFIG="" WORKDIR="" PARALLEL="" DATA_PARALLEL=0 GPUS="" GPUS_SET=0 DRY_RUN=0 RUNS_PER_GPU=1
TPU="" ZONE="" PROJECT="" REMOTE_DIR="" SLURM=0
OVERRIDES=() SBATCH_OPTS=()
LAUNCH_OPTS=" --workdir --parallel --data-parallel --runs-per-gpu --gpus --dry-run --tpu --zone --project --remote-dir --slurm -h --help "

is_launch_opt() { [[ $LAUNCH_OPTS == *" ${1%%=*} "* ]]; }
looks_like_config() { [[ $1 != -* && ( $1 == *.py || $1 == *.py:* ) ]]; }

value_of() {  # value_of OPTION "$@": the value of --opt=V or --opt V; sets SHIFT
  local opt=$1; shift
  if [[ $1 == *=* ]]; then VALUE=${1#*=}; SHIFT=1
  elif (( $# >= 2 )) && [[ $2 != --* ]]; then VALUE=$2; SHIFT=2
  else die "$opt needs a value (see --help)"; fi
}

while (( $# )); do
  arg=$1
  case $arg in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --data-parallel) DATA_PARALLEL=1; shift ;;
    --workdir|--workdir=*) value_of --workdir "$@"; WORKDIR=$VALUE; shift "$SHIFT" ;;
    --parallel|--parallel=*) value_of --parallel "$@"; PARALLEL=$VALUE; shift "$SHIFT"
      [[ $PARALLEL =~ ^[1-9][0-9]*$ ]] || die "--parallel needs a positive number, got '$PARALLEL'" ;;
    --runs-per-gpu|--runs-per-gpu=*) value_of --runs-per-gpu "$@"; RUNS_PER_GPU=$VALUE; shift "$SHIFT"
      [[ $RUNS_PER_GPU =~ ^[1-9][0-9]*$ ]] || die "--runs-per-gpu needs a positive number, got '$RUNS_PER_GPU'" ;;
    --gpus|--gpus=*) value_of --gpus "$@"; GPUS=$VALUE; GPUS_SET=1; shift "$SHIFT" ;;
    --tpu|--tpu=*) value_of --tpu "$@"; TPU=$VALUE; shift "$SHIFT" ;;
    --zone|--zone=*) value_of --zone "$@"; ZONE=$VALUE; shift "$SHIFT" ;;
    --project|--project=*) value_of --project "$@"; PROJECT=$VALUE; shift "$SHIFT" ;;
    --remote-dir|--remote-dir=*) value_of --remote-dir "$@"; REMOTE_DIR=$VALUE; shift "$SHIFT" ;;
    --slurm)
      SLURM=1; shift
      # Everything up to the next launch.sh option, override or the config goes to sbatch.
      while (( $# )) && ! is_launch_opt "$1" && [[ $1 != --config.* && $1 != --noconfig.* ]] \
          && ! { [[ -z $CONFIG ]] && looks_like_config "$1"; }; do
        SBATCH_OPTS+=("$1"); shift
      done ;;
    --config.*|--noconfig.*) OVERRIDES+=("$arg"); shift ;;
    --config=*) [[ -z $CONFIG ]] || die "two configs: '$CONFIG' and '${arg#*=}'"; CONFIG=${arg#*=}; shift ;;
    -*) die "unknown option '$arg'. Options: ${LAUNCH_OPTS# }; config fields are set with --config.FIELD=VALUE (see --help)" ;;
    *)
      [[ -z $CONFIG ]] || die "unexpected argument '$arg' after the config '$CONFIG'; config fields are set with --config.FIELD=VALUE"
      CONFIG=$arg; shift ;;
  esac
done

[[ -n $CONFIG ]] || die "no config given, e.g. ./launch.sh configs/cifar10_degradation.py:quick (see --help)"
CONFIG_FILE=${CONFIG%%:*}
[[ -f $CONFIG_FILE ]] || die "unknown config '$CONFIG_FILE': no such file (configs: $(cd "$REPO" && ls configs/*.py 2>/dev/null | tr '\n' ' '))"
[[ -n $TPU && $SLURM == 1 ]] && die "--tpu and --slurm do not go together"
[[ -n $ZONE || -n $PROJECT || -n $REMOTE_DIR ]] && [[ -z $TPU ]] && die "--zone/--project/--remote-dir go with --tpu NAME"
if [[ -n $TPU || $SLURM == 1 ]]; then
  [[ $DATA_PARALLEL == 1 || $GPUS_SET == 1 || $RUNS_PER_GPU != 1 ]] && die "--data-parallel, --gpus and --runs-per-gpu are for local runs (TPU and SLURM runs use every device they are given)"
fi
[[ -n $TPU && -n $PARALLEL ]] && die "--parallel is for local and SLURM launches (a TPU pod runs one run at a time)"

q() {  # quote for the shell like Python's shlex.quote: readable and exact
  if [[ -n $1 && $1 =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then printf '%s' "$1"
  else local sq="'\\''"; printf "'%s'" "${1//\'/$sq}"; fi
}
qjoin() { local out="" a; for a in "$@"; do out+="${out:+ }$(q "$a")"; done; printf '%s' "$out"; }

# ------------------------------------------------------------------------------ TPU VM pod
if [[ -n $TPU ]]; then
  [[ -n $ZONE ]] || die "--tpu needs --zone (e.g. --zone us-central2-b)"
  if [[ -z $REMOTE_DIR ]]; then
    REMOTE_DIR=$REPO
    [[ -n ${HOME:-} && $REPO == "$HOME"/* ]] && REMOTE_DIR="~/${REPO#"$HOME"/}"
  fi
  if [[ $REMOTE_DIR == "~/"* ]]; then remote_cd="~/$(q "${REMOTE_DIR#\~/}")"; else remote_cd=$(q "$REMOTE_DIR"); fi
  inner=(./launch.sh "$CONFIG")
  [[ -n $WORKDIR ]] && inner+=(--workdir "$WORKDIR")
  inner+=("${OVERRIDES[@]}")
  # Every worker runs the same sweep in the same order; runs are data parallel over the whole
  # pod and jax.distributed initialises itself (RESNET_JAX_DISTRIBUTED=1, see resnet_jax.main).
  remote="cd $remote_cd && RESNET_JAX_DISTRIBUTED=1 $(qjoin "${inner[@]}")"
  cmd=(gcloud compute tpus tpu-vm ssh "$TPU" "--zone=$ZONE")
  [[ -n $PROJECT ]] && cmd+=("--project=$PROJECT")
  cmd+=(--worker=all "--command=$remote")
  if (( DRY_RUN )); then
    echo "# TPU VM $TPU ($ZONE): the same launch on every worker; WORKDIR must be shared storage"
    qjoin "${cmd[@]}"; echo
    exit 0
  fi
  command -v gcloud >/dev/null 2>&1 || die "gcloud not found: install the Google Cloud SDK (https://cloud.google.com/sdk/docs/install) and run 'gcloud auth login', or use --dry-run to see the command"
  exec "${cmd[@]}"
fi

# ------------------------------------------------------------------------------ Python
has_project() { (cd / && "$1" -c 'import resnet_jax.sweep, ml_collections' >/dev/null 2>&1); }

default_extras() {
  if [[ -n ${RESNET_JAX_EXTRAS+x} ]]; then echo "$RESNET_JAX_EXTRAS"
  elif command -v nvidia-smi >/dev/null 2>&1; then echo gpu
  elif [[ -e /dev/accel0 || -e /dev/vfio/0 ]]; then echo tpu
  fi
}

find_python() {
  if [[ -n ${RESNET_JAX_PYTHON:-} ]]; then
    PY=$(command -v "$RESNET_JAX_PYTHON") || die "RESNET_JAX_PYTHON=$RESNET_JAX_PYTHON: no such program"
    [[ $PY == /* ]] || PY="$PWD/$PY"
    has_project "$PY" || die "RESNET_JAX_PYTHON=$PY cannot import resnet_jax; install the project into it: $PY -m pip install -e $REPO"
    PY_FROM="RESNET_JAX_PYTHON"; return
  fi
  if [[ -n ${VIRTUAL_ENV:-} && -x $VIRTUAL_ENV/bin/python ]] && has_project "$VIRTUAL_ENV/bin/python"; then
    PY=$VIRTUAL_ENV/bin/python; PY_FROM="the active virtual environment"; return
  fi
  PY=$REPO/.venv/bin/python; PY_FROM="$REPO/.venv"
  if [[ ! -x $PY ]]; then
    command -v python3 >/dev/null 2>&1 || die "python3 not found; install Python >= 3.10 or set RESNET_JAX_PYTHON"
    note "first use: creating $REPO/.venv"
    python3 -m venv "$REPO/.venv" || die "python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
  fi
  if ! has_project "$PY"; then
    local extras; extras=$(default_extras)
    note "installing the project into $REPO/.venv (pip install -e .${extras:+[$extras]})"
    "$PY" -m pip install -e "$REPO${extras:+[$extras]}" || die "pip install -e $REPO failed"
    has_project "$PY" || die "the project is still not importable from $PY"
  fi
}
find_python

# ------------------------------------------------------------------------------ the plan
if (( ! GPUS_SET )); then
  if [[ -n ${CUDA_VISIBLE_DEVICES+x} ]]; then GPUS=$CUDA_VISIBLE_DEVICES
  elif command -v nvidia-smi >/dev/null 2>&1; then GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | tr -d ' ' | paste -sd, -)
  fi
fi
plan_args=(plan --format=shell "--gpus=$GPUS")
[[ -n $WORKDIR ]] && plan_args+=("--workdir=$WORKDIR")
(( SLURM )) || { [[ -n $PARALLEL ]] && plan_args+=("--parallel=$PARALLEL"); }
(( DATA_PARALLEL )) && plan_args+=(--data-parallel)
(( RUNS_PER_GPU > 1 )) && plan_args+=("--runs-per-gpu=$RUNS_PER_GPU")
PLAN=$("$PY" -m resnet_jax.sweep "${plan_args[@]}" -- "$CONFIG" "${OVERRIDES[@]}") || exit 2
eval "$PLAN"

to_launch=()
for i in "${!RUN_NAME[@]}"; do
  if [[ ${RUN_STATE[i]} == finished ]]; then
    echo "# skip ${RUN_NAME[i]}: ${RUN_DESC[i]}"
  else
    to_launch+=("$i")
  fi
done
if (( ${#to_launch[@]} == 0 )); then
  echo "# $SWEEP_NAME: all ${#RUN_NAME[@]} run(s) in $WORKDIR are finished; nothing to do"
  exit 0
fi

# ------------------------------------------------------------------------------ SLURM
if (( SLURM )); then
  sbatch_args=(sbatch "--python=$PY" "--workdir=$WORKDIR")
  [[ -n $PARALLEL ]] && sbatch_args+=("--parallel=$PARALLEL")
  for o in "${SBATCH_OPTS[@]}"; do sbatch_args+=("--sbatch-opt=$o"); done
  SCRIPT=$("$PY" -m resnet_jax.sweep "${sbatch_args[@]}" -- "$CONFIG" "${OVERRIDES[@]}") || exit 2
  script_path="$WORKDIR/slurm/$SWEEP_NAME-$(date +%Y%m%d-%H%M%S).sh"
  if (( DRY_RUN )); then
    echo "# would write $script_path and submit it with: sbatch $(q "$script_path")"
    printf '%s\n' "$SCRIPT"
    exit 0
  fi
  command -v sbatch >/dev/null 2>&1 || die "sbatch not found: --slurm needs a SLURM login node (or use --dry-run to see the script)"
  mkdir -p "$WORKDIR/slurm" || die "cannot create $WORKDIR/slurm"
  printf '%s\n' "$SCRIPT" > "$script_path"
  note "wrote $script_path"
  exec sbatch "$script_path"
fi

# ------------------------------------------------------------------------------ local
run_cmd() {  # run_cmd I: the command of run I as an array in CMD
  local i=$1
  CMD=()
  [[ -n ${RUN_GPUS[i]} ]] && CMD+=("CUDA_VISIBLE_DEVICES=${RUN_GPUS[i]}")
  [[ -n ${RUN_MEMFRAC[i]} ]] && CMD+=("XLA_PYTHON_CLIENT_MEM_FRACTION=${RUN_MEMFRAC[i]}" XLA_PYTHON_CLIENT_PREALLOCATE=false)
  CMD+=("$PY" -m resnet_jax.main "--config=${RUN_CONFIG[i]}" "--workdir=${RUN_DIR[i]}" "${OVERRIDES[@]}")
}

if (( DRY_RUN )); then
  if (( NUM_SLOTS > 1 )); then how="$NUM_SLOTS at a time (slot k runs its runs in order; output in <run>/launch.log)"
  else how="one after another"; fi
  (( RUNS_PER_GPU > 1 )) && how+=", $RUNS_PER_GPU runs sharing each GPU"
  echo "# $SWEEP_NAME: ${#to_launch[@]} run(s) in $WORKDIR, $how; python from $PY_FROM"
  for i in "${to_launch[@]}"; do
    echo "# ${RUN_NAME[i]}: ${RUN_DESC[i]}$( (( NUM_SLOTS > 1 )) && echo ", slot ${RUN_SLOT[i]}")"
    run_cmd "$i"; qjoin "${CMD[@]}"; echo
  done
  exit 0
fi

EXIT_SHARED_FAILURE=3  # resnet_jax.main.EXIT_SHARED_FAILURE
RESULTS=$(mktemp -d "${TMPDIR:-/tmp}/launch.XXXXXX") || die "mktemp failed"
trap 'rm -rf "$RESULTS"' EXIT
STOPPING=0 CHILD="" SLOT_PIDS=()

on_signal() {  # forward to what runs now: Python saves a checkpoint and exits 128+signal
  STOPPING=1
  [[ -n $CHILD ]] && kill -TERM "$CHILD" 2>/dev/null
  local p; for p in "${SLOT_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  return 0
}

run_slot() {  # run_slot S: the runs of slot S, one after another
  local slot=$1 i rc
  SLOT_PIDS=()  # in a slot's subshell: forward signals to this slot's run only
  trap 'on_signal' TERM INT
  for i in "${to_launch[@]}"; do
    [[ ${RUN_SLOT[i]} == "$slot" ]] || continue
    (( STOPPING )) && break
    [[ -e $RESULTS/shared ]] && break  # another slot's run met a failure every run shares
    mkdir -p "${RUN_DIR[i]}" || { echo "${RUN_NAME[i]} 1 ${RUN_DIR[i]}" >> "$RESULTS/rc"; continue; }
    run_cmd "$i"
    local envs=(env); while [[ ${CMD[0]} == [A-Z_]*=* ]]; do envs+=("${CMD[0]}"); CMD=("${CMD[@]:1}"); done
    echo "==> ${RUN_NAME[i]}: ${RUN_DESC[i]} in ${RUN_DIR[i]}${RUN_GPUS[i]:+ (GPUs ${RUN_GPUS[i]}${RUN_MEMFRAC[i]:+, ${RUN_MEMFRAC[i]} of the memory})}$( (( NUM_SLOTS > 1 )) && echo "; log: ${RUN_DIR[i]}/launch.log")"
    if (( NUM_SLOTS > 1 )); then
      "${envs[@]}" "${CMD[@]}" >> "${RUN_DIR[i]}/launch.log" 2>&1 < /dev/null &
    else
      "${envs[@]}" "${CMD[@]}" > >(tee -a "${RUN_DIR[i]}/launch.log") 2>&1 < /dev/null &
    fi
    CHILD=$!
    wait "$CHILD"; rc=$?
    if (( STOPPING )); then  # the trap cut `wait` short: wait for the run to save and exit
      wait "$CHILD" 2>/dev/null; local rc2=$?; (( rc2 != 127 )) && rc=$rc2
    fi
    CHILD=""
    echo "${RUN_NAME[i]} $rc ${RUN_DIR[i]}" >> "$RESULTS/rc"
    if (( rc == EXIT_SHARED_FAILURE )); then  # resnet_jax.main: every other run would fail the same way
      echo "${RUN_NAME[i]}" > "$RESULTS/shared"
      (( NUM_SLOTS > 1 )) && grep -m1 '^error:' "${RUN_DIR[i]}/launch.log"
      echo "==> ${RUN_NAME[i]}: exit code $rc, a failure every run of this launch shares: stopping here"
      break
    elif (( rc == 0 )); then echo "==> ${RUN_NAME[i]}: done"
    else echo "==> ${RUN_NAME[i]}: exit code $rc; the other runs go on; log: ${RUN_DIR[i]}/launch.log"; fi
    (( rc == 130 || rc == 143 )) && STOPPING=1
  done
}

trap 'on_signal' TERM INT
if (( NUM_SLOTS == 1 )); then
  run_slot 0
else
  for ((s = 0; s < NUM_SLOTS; s++)); do run_slot "$s" & SLOT_PIDS+=($!); done
  for p in "${SLOT_PIDS[@]}"; do
    while kill -0 "$p" 2>/dev/null; do wait "$p"; done
  done
fi

failed=() interrupted=0 ran=0
while read -r name rc dir; do
  ran=$((ran + 1))
  (( rc == 130 || rc == 143 )) && interrupted=$rc
  (( rc != 0 && rc != EXIT_SHARED_FAILURE )) && failed+=("$name (exit $rc, log: $dir/launch.log)")
done < <(cat "$RESULTS/rc" 2>/dev/null)
if (( interrupted )); then
  note "interrupted; checkpoints are saved. Run the same command again to resume."
  exit "$interrupted"
fi
if [[ -e $RESULTS/shared ]]; then
  note "stopped: $(cat "$RESULTS/shared") failed for a reason every run shares (the error above); $(( ${#to_launch[@]} - ran )) run(s) not started. Fix it and run the same command again: finished runs are skipped${failed[*]:+; also failed: ${failed[*]}}"
  exit "$EXIT_SHARED_FAILURE"
fi
if (( ${#failed[@]} )); then
  note "${#failed[@]} of ${#to_launch[@]} run(s) failed: ${failed[*]}"
  exit 1
fi
(( STOPPING )) && exit 143
echo "# $SWEEP_NAME: ${#to_launch[@]} run(s) done in $WORKDIR"
