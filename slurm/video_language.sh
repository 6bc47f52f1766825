#!/usr/bin/env bash
#SBATCH --job-name=turbo-video-language
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
# Video-language contrastive training (video ViT + text encoder).
#   sbatch slurm/video_language.sh
#   sbatch --nodes=4 --export=ALL,CONFIG=configs/my_run.yaml,EXTRA_SETS="train.steps=2000" slurm/video_language.sh
# Command-line options override the #SBATCH lines above (add --partition/--account there).
# Environment: CONFIG, DS_CONFIG, RUN_DIR, EXTRA_SETS, TURBO_DS_ROOT, PYTHON (see launch.sh).
set -euo pipefail
export CONFIG=${CONFIG:-configs/demo_video_language.yaml}
export DS_CONFIG=${DS_CONFIG:-ds_configs/zero2_bf16.json}

# Slurm runs a copy of this script from its spool dir: find the repo by TURBO_DS_ROOT, the
# path the job was submitted with, the submit dir, or this script's dir (outside Slurm).
for TURBO_DS_ROOT in "${TURBO_DS_ROOT:-}" \
    "$(scontrol show job "${SLURM_JOB_ID:-none}" 2>/dev/null | sed -n 's|^ *Command=\(.*\)/slurm/[^/ ]*$|\1|p')" \
    "${SLURM_SUBMIT_DIR:-}" "$(dirname "$0")/.."; do
    [[ -n $TURBO_DS_ROOT && -f $TURBO_DS_ROOT/slurm/launch.sh ]] && break
done
[[ -f $TURBO_DS_ROOT/slurm/launch.sh ]] || { echo "cannot find the turbo_ds repo: set TURBO_DS_ROOT" >&2; exit 1; }
export TURBO_DS_ROOT
exec bash "$TURBO_DS_ROOT/slurm/launch.sh" run
