#!/usr/bin/env bash
# The one launch helper behind slurm/action_cls.sh, video_language.sh and long_video.sh.
#
# Modes:
#   launch.sh run              inside the batch script (the templates exec it): print the
#                              run header, srun one rank per GPU (one per task slot on
#                              GPU-less nodes), handle preemption, requeue, print configs
#   launch.sh task -- CMD...   inside each srun task: export the rank variables, exec CMD
#   launch.sh print-env        print the rank variables derived from the SLURM_* env
#
# Environment read by `run` (the templates set the first two; all overridable with
# `sbatch --export=ALL,CONFIG=...,DS_CONFIG=...,RUN_DIR=...,EXTRA_SETS="k=v k2=v2"`):
#   CONFIG         experiment YAML, relative to the repo root or absolute
#   DS_CONFIG      DeepSpeed JSON
#   RUN_DIR        default runs/${SLURM_JOB_NAME}-${SLURM_JOB_ID}; relative paths are
#                  taken from the repo root. A requeued job keeps its SLURM_JOB_ID, so it
#                  resumes into the same run dir (the trainer auto-resumes from `latest`).
#   EXTRA_SETS     whitespace-separated key=value config overrides, each passed as
#                  `--set key=value` (values cannot contain spaces)
#   TURBO_DS_ROOT  repo root (the templates also use it to find this script); default: the
#                  parent of this script's folder
#   PYTHON         interpreter for the trainer (default: python)
#   GPUS_PER_NODE  override the GPU count Slurm reports (SLURM_GPUS_ON_NODE/_PER_NODE); when
#                  neither is set, the GPUs `nvidia-smi -L` lists. A count above what the node
#                  shows stops the job (no silent CPU training); 0 trains on CPU
#   LAUNCH_CMD     for tests/debugging: a bash command line each task runs instead of
#                  the trainer (it sees the same rank env, RUN_DIR, signals)
#
# Exported inside each task (from SLURM_* of the step):
#   MASTER_ADDR  first host of the job's node list (`scontrol show hostnames`)
#   MASTER_PORT  20000 + SLURM_JOB_ID % 12000 (differs between concurrent jobs; below Linux's
#                ephemeral ports, 32768-60999 by default, which outgoing connections take at random)
#   RANK=$SLURM_PROCID  LOCAL_RANK=$SLURM_LOCALID (0 when CUDA_VISIBLE_DEVICES holds one id: the site
#                binds one GPU per task)  WORLD_SIZE=$SLURM_NTASKS  NODE_RANK=$SLURM_NODEID
#   LOCAL_SIZE, LOCAL_WORLD_SIZE  the step's tasks on this node (SLURM_STEP_TASKS_PER_NODE);
#                DeepSpeed's CPU shared-memory collectives run only when it equals WORLD_SIZE
#                (one node), and the trainer checks it against the hosts its ranks really run on
#   GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME  the interface that routes to MASTER_ADDR (the one
#                holding its address on the master node), unless already set or it is `lo`.
#                Without it gloo binds to the address of the hostname, which on many clusters
#                (and in network namespaces) is 127.0.x.1: peers on other nodes are refused.
#
# On a real cluster, set in the environment the job starts with (they pass through unchanged):
#   NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME  when the route to the master node is not the
#                network the ranks should use (e.g. ib0 rather than a management eth0);
#                NCCL_IB_HCA and friends select InfiniBand/RoCE adapters (NCCL reads them)
#   DEEPSPEED_TIMEOUT (minutes, default 10)  how long start-up collectives wait; training then
#                uses train.collective_timeout_s (see README "On paper")
#   OMP_NUM_THREADS  set here to --cpus-per-task on CPU-only nodes
#
# Preemption / time limit: the templates ask for `--signal=B:USR1@120 --requeue`. On USR1
# (or TERM) the batch shell forwards SIGUSR1 to srun, which forwards it to every task; the
# trainer finishes the step in flight, writes a checkpoint atomically and exits 0. When srun
# has exited and the signal was USR1 and $RUN_DIR/COMPLETED (written by the trainer at
# the end of training) does not exist, the job requeues itself with `scontrol requeue`.
# TERM (scancel, preemption by Slurm, which requeues by itself) never requeues.
# A lost node: the ranks left give up after train.collective_timeout_s in a collective and
# exit 1; srun waits for the dead node's tasks until Slurm declares the node DOWN
# (SlurmdTimeout), then Slurm ends the job (NODE_FAIL) and requeues it (--requeue). Ranks
# that fail while their nodes stay up end srun at once (--kill-on-bad-exit); then, if this
# job wrote a checkpoint (so a failure that recurs before the next one cannot loop) and may
# be requeued, it requeues itself. Either way it resumes from the newest complete
# checkpoint, losing at most train.ckpt_every steps.
# A requeued job waits ~120 s in PENDING before it may start again (Slurm's requeue
# BeginTime); `scontrol update JobId=N StartTime=now` skips the wait (send it >= 2 s after
# the requeue, else slurmd refuses the relaunch: "Job credential revoked"). `--signal` may
# arrive up to 60 s before the requested time. srun's forwarded SIGUSR1 reaches every
# process of the step, so the trainer's child processes (DataLoader workers) must ignore
# it or they die with the default action.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() { echo "launch.sh: error: $*" >&2; exit 1; }
log() { echo "[launch.sh $(date '+%F %T')] $*"; }

# --- per-task rank wiring -------------------------------------------------------------

# Tasks of the step on this node: entry SLURM_NODEID of SLURM_STEP_TASKS_PER_NODE ("2(x3),1"
# means 2 2 2 1), else SLURM_NTASKS_PER_NODE, else SLURM_NTASKS / SLURM_NNODES.
tasks_on_node() {
    local spec=${SLURM_STEP_TASKS_PER_NODE:-${SLURM_TASKS_PER_NODE:-}} node=${SLURM_NODEID:-0} part n rep
    if [[ -z $spec ]]; then
        n=${SLURM_NTASKS_PER_NODE:-$((SLURM_NTASKS / ${SLURM_NNODES:-1}))}
        echo "${n%%(*}"
        return
    fi
    local -a counts=() parts
    IFS=, read -ra parts <<<"$spec"
    for part in "${parts[@]}"; do
        if [[ $part =~ ^([0-9]+)\(x([0-9]+)\)$ ]]; then
            n=${BASH_REMATCH[1]} rep=${BASH_REMATCH[2]}
        elif [[ $part =~ ^[0-9]+$ ]]; then
            n=$part rep=1
        else
            die "cannot read the tasks per node from '$spec'"
        fi
        for ((; rep > 0; rep--)); do counts+=("$n"); done
    done
    ((node < ${#counts[@]})) || die "SLURM_NODEID=$node but '$spec' lists ${#counts[@]} node(s)"
    echo "${counts[node]}"
}

# The interface that reaches host $1 from here (on that host itself: the one holding its
# address); nothing when it cannot tell (no `ip`, unresolvable name) or it is `lo`.
route_interface() {
    command -v ip >/dev/null 2>&1 && command -v getent >/dev/null 2>&1 || return 0
    local addr dev
    addr=$(getent ahostsv4 "$1" 2>/dev/null | awk 'NR == 1 {print $1}')
    [[ -n $addr ]] || return 0
    dev=$(ip -o -4 addr show to "$addr/32" 2>/dev/null | awk 'NR == 1 {print $2}')
    [[ -n $dev ]] || dev=$(ip -o route get "$addr" 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p')
    [[ -z $dev || $dev == lo ]] || echo "$dev"
}

# Set MASTER_ADDR MASTER_PORT RANK LOCAL_RANK WORLD_SIZE NODE_RANK LOCAL_SIZE LOCAL_WORLD_SIZE
# (and the socket interfaces, see the header) from the SLURM_* env of a task.
derive_rank_env() {
    local nodelist=${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}
    [[ -n $nodelist ]] || die "SLURM_JOB_NODELIST is not set (not inside a Slurm job?)"
    local var
    for var in SLURM_JOB_ID SLURM_PROCID SLURM_LOCALID SLURM_NTASKS; do
        [[ -n ${!var:-} ]] || die "$var is not set (not inside an srun task?)"
    done
    MASTER_ADDR=$(scontrol show hostnames "$nodelist" | head -n 1)
    [[ -n $MASTER_ADDR ]] || die "scontrol show hostnames '$nodelist' gave nothing"
    MASTER_PORT=$((20000 + SLURM_JOB_ID % 12000))
    RANK=$SLURM_PROCID
    LOCAL_RANK=$SLURM_LOCALID
    # A site that binds one GPU per task (--gpus-per-task=1, GPU cgroups) shows each task one device:
    # it is cuda:0 in the task whatever its SLURM_LOCALID (distributed.rank_device refuses anything else)
    [[ ! ${CUDA_VISIBLE_DEVICES:-} =~ ^[^,]+$ || ${CUDA_VISIBLE_DEVICES} == NoDevFiles ]] || LOCAL_RANK=0
    WORLD_SIZE=$SLURM_NTASKS
    NODE_RANK=${SLURM_NODEID:-0}
    LOCAL_SIZE=$(tasks_on_node)
    LOCAL_WORLD_SIZE=$LOCAL_SIZE
    export MASTER_ADDR MASTER_PORT RANK LOCAL_RANK WORLD_SIZE NODE_RANK LOCAL_SIZE LOCAL_WORLD_SIZE
    local dev
    dev=$(route_interface "$MASTER_ADDR")
    if [[ -n $dev ]]; then
        export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-$dev} NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-$dev}
    fi
}

RANK_VARS=(MASTER_ADDR MASTER_PORT RANK LOCAL_RANK WORLD_SIZE NODE_RANK LOCAL_SIZE LOCAL_WORLD_SIZE
    GLOO_SOCKET_IFNAME NCCL_SOCKET_IFNAME)

print_env() {
    derive_rank_env
    local var
    for var in "${RANK_VARS[@]}"; do
        [[ -z ${!var:-} ]] || echo "$var=${!var}"
    done
}

task() {
    [[ ${1:-} == -- ]] && shift
    (($#)) || die "usage: launch.sh task -- CMD..."
    derive_rank_env
    if [[ $LOCAL_RANK == 0 ]]; then   # one line per node (stderr): where its ranks run and how they connect
        log >&2 "node $(hostname): node rank $NODE_RANK, ranks ${SLURM_GTIDS:-$RANK} of $WORLD_SIZE (LOCAL_SIZE=$LOCAL_SIZE)," \
            "master $MASTER_ADDR:$MASTER_PORT, GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-unset}" \
            "NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-unset}"
    fi
    exec "$@"
}

# --- batch-level driver ---------------------------------------------------------------

# GPUs this node shows: `nvidia-smi -L` lines, else /dev/nvidiaN device files; 0 without a driver.
visible_gpus() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        { nvidia-smi -L 2>/dev/null || true; } | grep -c '^GPU ' || true
    else
        compgen -G '/dev/nvidia[0-9]*' | wc -l
    fi
}

# GPUs per node: what the job asked for ("a100:8" -> 8; GPUS_PER_NODE overrides), else what the node
# shows. A request the node cannot meet stops here: silently training on the CPU would waste the job.
gpus_per_node() {
    local g=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}} seen
    g=${g##*:}
    seen=$(visible_gpus)
    [[ -n $g ]] || g=$seen
    [[ $g =~ ^[0-9]+$ ]] || die "cannot read a GPU count from '$g' (set GPUS_PER_NODE)"
    ((g <= seen)) || die "$g GPU(s) per node requested (GPUS_PER_NODE / sbatch --gpus-per-node) but" \
        "$(hostname) shows $seen (nvidia-smi -L): check the driver and --gres, or set GPUS_PER_NODE=0 to run on CPU"
    echo "$g"
}

SIGNALLED=""   # USR1 or TERM once the batch shell got one
TRAPPED=0      # set by the handler; tells the wait loop that wait was interrupted
SRUN_PID=""

on_signal() {
    TRAPPED=1
    # USR1 (time limit coming) wins over TERM for the requeue decision
    [[ $SIGNALLED == USR1 ]] || SIGNALLED=$1
    log "got SIG$1: asking the tasks to checkpoint and stop (SIGUSR1 to srun)"
    [[ -z $SRUN_PID ]] || kill -USR1 "$SRUN_PID" 2>/dev/null || true
}

run() {
    [[ -n ${SLURM_JOB_ID:-} ]] || die "'run' must be called inside a Slurm batch job"
    local root=${TURBO_DS_ROOT:-$(dirname "$HERE")}
    cd "$root"
    root=$(pwd)
    local config=${CONFIG:?CONFIG is not set} ds_config=${DS_CONFIG:?DS_CONFIG is not set}
    RUN_DIR=${RUN_DIR:-runs/${SLURM_JOB_NAME:-job}-${SLURM_JOB_ID}}
    [[ $RUN_DIR == /* ]] || RUN_DIR=$root/$RUN_DIR
    export RUN_DIR
    mkdir -p "$RUN_DIR"

    local nnodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}} gpus per_node device
    gpus=$(gpus_per_node) || exit 1
    if ((gpus > 0)); then
        per_node=$gpus
        device="$gpus GPU(s)/node"
    else
        # no GPUs: one rank per task slot the job asked for, DeepSpeed on CPU
        per_node=${SLURM_NTASKS_PER_NODE:-$((${SLURM_NTASKS:-$nnodes} / nnodes))}
        per_node=${per_node%%(*}   # "2(x3)" style values
        export DS_ACCELERATOR=cpu
        export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
        device="CPU only (DS_ACCELERATOR=cpu, OMP_NUM_THREADS=$OMP_NUM_THREADS)"
    fi
    ((per_node >= 1)) || per_node=1
    local world=$((nnodes * per_node))

    local -a cmd
    if [[ -n ${LAUNCH_CMD:-} ]]; then
        cmd=(bash -c "$LAUNCH_CMD")
    else
        cmd=("${PYTHON:-python}" -u turbo_ds/train.py --ds_config "$ds_config" --config "$config"
            --set "run_dir=$RUN_DIR")
        local kv
        for kv in ${EXTRA_SETS:-}; do cmd+=(--set "$kv"); done
    fi

    local -a srun_args=(--nodes="$nnodes" --ntasks="$world" --ntasks-per-node="$per_node"
        --kill-on-bad-exit=1)
    # Slurm 22.05 srun does not inherit --cpus-per-task from sbatch
    [[ -z ${SLURM_CPUS_PER_TASK:-} ]] || srun_args+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")

    log "job ${SLURM_JOB_NAME:-?} ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) in $root"
    log "run dir:    $RUN_DIR"
    log "nodes:      ${SLURM_JOB_NODELIST:-?} ($nnodes) x $per_node rank(s), world size $world, $device"
    log "config:     $config"
    log "ds_config:  $ds_config"
    log "command:    srun ${srun_args[*]} bash $HERE/launch.sh task --$(printf ' %q' "${cmd[@]}")"

    local ckpt_before
    ckpt_before=$(latest_checkpoint)
    trap 'on_signal USR1' USR1
    trap 'on_signal TERM' TERM
    srun "${srun_args[@]}" bash "$HERE/launch.sh" task -- "${cmd[@]}" &
    SRUN_PID=$!
    [[ -z $SIGNALLED ]] || kill -USR1 "$SRUN_PID" 2>/dev/null || true   # signal came early
    # A trapped signal makes `wait` return early (status > 128): wait again until srun
    # has really exited (bash keeps the exit status of a reaped child for a later wait).
    local rc
    while :; do
        TRAPPED=0
        rc=0
        wait "$SRUN_PID" || rc=$?
        ((TRAPPED)) || break
    done
    SRUN_PID=""
    log "srun exited with status $rc"

    local f
    for f in "$RUN_DIR/config.yaml" "$RUN_DIR/ds_config.json"; do
        [[ -f $f ]] || continue
        echo "----- $f"
        cat "$f"
    done

    local ckpt_after
    ckpt_after=$(latest_checkpoint)
    if [[ -e $RUN_DIR/COMPLETED ]]; then
        log "training completed ($RUN_DIR/COMPLETED)"
    elif [[ $SIGNALLED == USR1 ]]; then
        log "stopped before the end of training: requeueing job $SLURM_JOB_ID"
        requeue
    elif ((rc != 0)) && [[ -z $SIGNALLED && $ckpt_after != "$ckpt_before" ]] && requeue_allowed; then
        # e.g. a node was lost and the survivors' collectives timed out; a failure that
        # repeats before the next checkpoint stops here instead of looping
        log "srun failed (status $rc) after this job checkpointed ${ckpt_after} (it started from" \
            "${ckpt_before:-nothing}): requeueing job $SLURM_JOB_ID to resume from it (sbatch --no-requeue: never)"
        requeue
    fi
    exit "$rc"
}

# The newest complete checkpoint of the run (the trainer's checkpoints/latest pointer), or nothing.
latest_checkpoint() {
    [[ ! -f $RUN_DIR/checkpoints/latest ]] || cat "$RUN_DIR/checkpoints/latest"
}

# Whether the job may be requeued (sbatch --requeue, the templates' default; --no-requeue not).
requeue_allowed() {
    scontrol show job "$SLURM_JOB_ID" 2>/dev/null | grep -q 'Requeue=1'
}

requeue() {
    scontrol requeue "$SLURM_JOB_ID" || die "scontrol requeue $SLURM_JOB_ID failed"
    exit 0   # (Slurm usually kills this shell first)
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

case ${1:-} in
    run) run ;;
    task) shift; task "$@" ;;
    print-env) print_env ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
