#!/usr/bin/env bash
#SBATCH --job-name=turbo-long-video
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#
# Long-video activity classification (end-to-end, ZeRO-3).
#   sbatch slurm/long_video.sh
#   sbatch --nodes=4 --export=ALL,CONFIG=configs/my_run.yaml,EXTRA_SETS="train.steps=2000" slurm/long_video.sh
# Command-line options override the #SBATCH lines above (add --partition/--account there).
# Environment: CONFIG, DS_CONFIG, RUN_DIR, EXTRA_SETS, TURBO_DS_ROOT, PYTHON (see launch.sh).
set -euo pipefail
export CONFIG=${CONFIG:-configs/demo_long_video.yaml}
export DS_CONFIG=${DS_CONFIG:-ds_configs/zero3_bf16.json}

# Slurm runs a spool copy of this script: find the repo from TURBO_DS_ROOT, the path the job
# was submitted with, or the submit dir; launch.sh does the rest.
submitted=$(scontrol show job "${SLURM_JOB_ID:-none}" 2>/dev/null | sed -n 's|^ *Command=\(.*\)/slurm/[^/ ]*$|\1|p')
launch=${TURBO_DS_ROOT:-${submitted:-${SLURM_SUBMIT_DIR:-.}}}/slurm/launch.sh
[[ -f $launch ]] || { echo "cannot find $launch: set TURBO_DS_ROOT to the turbo_ds repo" >&2; exit 1; }
exec bash "$launch" run
