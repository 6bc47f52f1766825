#!/usr/bin/env bash
#SBATCH --job-name=turbo-build-shards
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=32
#SBATCH --time=12:00:00
#SBATCH --output=slurm-%x-%A_%a.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#
# Build one dataset's shards as a Slurm array: task I builds part I of N (N = the array's size), its own
# contiguous range of shards, into one --out that every node reaches (a shared folder, or s3:// etc.).
#   sbatch --array=0-63%16 slurm/build_shards.sh --task video_language --manifest webvid.csv \
#       --video-root /data/webvid --out /shared/webvid/train --fps 8 --short-side 256 --shuffle
#   sbatch --array=0-63%16 slurm/build_shards.sh prepare_dataset.py webvid --annotations results_10M_train.csv \
#       --video-root /data/webvid --split train --out /shared/webvid/train
# Arguments: those of data_prep/build_shards.py, or of data_prep/prepare_dataset.py after its name. Number
# the tasks from 0; --workers defaults to the task's CPUs (--cpus-per-task). Options of sbatch (--partition,
# --account, --cpus-per-task, --time) go before the script and override the #SBATCH lines above.
#
# The merge: the first task submits `build_shards.py --merge OUT` as a job that runs once every task has
# ended well (--dependency=afterok, --kill-on-invalid-dep=yes); it checks the parts and writes manifest.json
# (the part that finishes last merges too, so the merge job often only checks). Its output goes next to the
# tasks' (slurm-<name>-merge-<jobid>.out).
# Preemption / time limit (USR1 120 s before it) and a builder killed by a signal (kill -9, the OOM killer)
# requeue the task (the latter at most MAX_RESTARTS times, default 3); it resumes where it stopped, with the
# same bytes, and the merge job waits for it. A task that failed for good (a bad option: exit 2): fix it and
# rerun that task alone with the part count given, e.g. sbatch --array=5 slurm/build_shards.sh ... --parts 64
# (it submits its own merge job; the first one was cancelled when the task failed).
# Environment: TURBO_DS_ROOT (the repo; default: found from the submitted path), PYTHON (default python).
set -euo pipefail

log() { echo "[build_shards.sh $(date '+%F %T')] $*"; }

# Slurm runs a spool copy of this script: find the repo from TURBO_DS_ROOT, the path the job was
# submitted with (Command= holds the arguments too), or the submit dir.
this_job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}   # a task's own id; SLURM_JOB_ID of
this_job=${this_job:-${SLURM_JOB_ID:-none}}                                  # one task may be the whole array's
submitted=$(scontrol show job "$this_job" 2>/dev/null | sed -n 's|^ *Command=\(.*\)/slurm/build_shards\.sh\( .*\)\{0,1\}$|\1|p' | head -n 1)
root=${TURBO_DS_ROOT:-${submitted:-${SLURM_SUBMIT_DIR:-.}}}
[[ -f $root/data_prep/build_shards.py ]] || { echo "cannot find $root/data_prep/build_shards.py: set TURBO_DS_ROOT to the turbo_ds repo" >&2; exit 1; }
python=${PYTHON:-python}

if [[ ${1:-} == --merge ]]; then   # the dependent merge job
    log "merge job ${SLURM_JOB_ID:-?}: $python data_prep/build_shards.py --merge ${2:?--merge OUT}"
    exec "$python" -u "$root/data_prep/build_shards.py" --merge "$2"
fi

tool=build_shards
case ${1:-} in
    prepare_dataset.py | prepare_dataset) tool=prepare_dataset; shift ;;
    build_shards.py | build_shards) shift ;;
esac
args=("$@")
out="" prev=""
for a in "${args[@]}"; do
    [[ $prev != --out ]] || out=$a
    [[ $a != --out=* ]] || out=${a#--out=}
    prev=$a
done
[[ -n $out ]] || { echo "build_shards.sh: --out is required" >&2; exit 2; }
[[ " ${args[*]} " == *" --workers"* ]] || args+=(--workers "${SLURM_CPUS_PER_TASK:-1}")

# The first task of the array, on its first start, submits the merge (the array's other variables stay behind).
if [[ -n ${SLURM_ARRAY_JOB_ID:-} && ${SLURM_ARRAY_TASK_ID} == "${SLURM_ARRAY_TASK_MIN}" && ${SLURM_RESTART_COUNT:-0} == 0 ]]; then
    stdout=$(scontrol show job "$this_job" | sed -n 's|^ *StdOut=||p')
    unset_array=()
    for v in ${!SLURM_ARRAY_@}; do unset_array+=(-u "$v"); done
    if merge_id=$(env "${unset_array[@]}" sbatch --parsable --dependency=afterok:"$SLURM_ARRAY_JOB_ID" \
        --kill-on-invalid-dep=yes --job-name="${SLURM_JOB_NAME:-build}-merge" --nodes=1 --ntasks=1 --cpus-per-task=1 \
        --time=2:00:00 --output="$(dirname "${stdout:-./x}")/slurm-%x-%j.out" --export=ALL,TURBO_DS_ROOT="$root" \
        "$root/slurm/build_shards.sh" --merge "$out"); then
        log "submitted the merge: job ${merge_id%%;*} (runs after every task of job $SLURM_ARRAY_JOB_ID ended well)"
    else   # e.g. a site that allows no submission from compute nodes: the last part still merges
        log "warning: could not submit the merge job; the last part to finish merges, or run" \
            "python data_prep/build_shards.py --merge $out"
    fi
fi

SIGNALLED="" BUILDER=""
on_signal() {
    [[ $SIGNALLED == USR1 ]] || SIGNALLED=$1   # USR1 (the time limit) decides the requeue
    log "got SIG$1: stopping the builder (it resumes where it stopped)"
    [[ -z $BUILDER ]] || kill -TERM "$BUILDER" 2>/dev/null || true
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

part="part ${SLURM_ARRAY_TASK_ID:-0} of ${SLURM_ARRAY_TASK_COUNT:-1}"
"$python" -u "$root/data_prep/$tool.py" "${args[@]}" &
BUILDER=$!
log "$part (job $this_job, restart ${SLURM_RESTART_COUNT:-0}) on $(hostname): builder pid $BUILDER:" \
    "$python data_prep/$tool.py$(printf ' %q' "${args[@]}")"
rc=0
while :; do   # a trapped signal interrupts wait: wait again until the builder has exited
    rc=0
    wait "$BUILDER" || rc=$?
    kill -0 "$BUILDER" 2>/dev/null || break
done
log "the builder exited with status $rc"

requeue() {
    scontrol requeue "$this_job" || { log "scontrol requeue $this_job failed"; exit 1; }
    exit 0   # (Slurm usually ends this shell first)
}
if [[ $SIGNALLED == USR1 ]]; then
    log "stopped before the time limit: requeueing $this_job"
    requeue
elif ((rc > 128)) && [[ -z $SIGNALLED ]] && ((${SLURM_RESTART_COUNT:-0} < ${MAX_RESTARTS:-3})) &&
    scontrol show job "$this_job" 2>/dev/null | grep -q 'Requeue=1'; then
    log "the builder was killed by signal $((rc - 128)): requeueing $this_job to resume it" \
        "(restart $((${SLURM_RESTART_COUNT:-0} + 1)) of at most ${MAX_RESTARTS:-3})"
    requeue
fi
exit "$rc"
