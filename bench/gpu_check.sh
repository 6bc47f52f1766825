#!/usr/bin/env bash
# The first thing to run on a CUDA machine: does turbo_ds work there, and how fast is it?
#
#   bash bench/gpu_check.sh [OUT]            all GPUs torch sees on this machine (default OUT: bench/out/gpu_check)
#   bash bench/gpu_check.sh --smoke OUT      the same steps with tiny settings on the CPU: checks the
#                                            plumbing on a machine without a GPU (the test suite runs it)
#   bash bench/gpu_check.sh --only demo,loader OUT    only these steps (the others are reported as skipped)
#
# Steps (each one's output in OUT/<step>.log; a failing step is recorded and the next one runs):
#   env          torch / CUDA / NCCL / DeepSpeed versions and the GPUs torch counts (a CUDA_VISIBLE_DEVICES
#                subset, MIG instances: what training uses; nvidia-smi's full listing is in OUT/nvidia-smi.log).
#                When nvidia-smi lists GPUs that torch cannot use (a CPU build of torch, a driver mismatch),
#                the check stops here with one line and exit status 2: nothing would run on the GPUs.
#   demo         the README demo on NCCL, one rank per GPU (ZeRO-2, bf16): eval top-1, clips/s, peak memory
#   compile_train  model.compile: true through turbo_ds/train.py: the demo model on every GPU, ZeRO-2 with
#                gradient accumulation 2, stopped with a checkpoint half way and resumed to the end
#   batch        the largest batch of ViT-B/16 at 16x224^2 (keep 1.0) that fits one GPU in the trainer's
#                precision (bf16 weights, fp32 master weights, gradient clipping: --trainer-precision)
#   turbo_speed  bench/turbo_speed.py --device cuda --trainer-precision at that batch: step time and memory at
#                keep 1.0 / 0.5 / 0.25, turbo_ds vs transformers' VideoMAE
#   compiled     the same at keep 1.0 / 0.25 with --compile (model.compile: true) vs VideoMAE eager
#   throughput   bench/train_throughput.py (the bare step in the trainer's precision vs the trainer)
#   loader       bench/loader_speed.py --make-real: camera-like clips transcoded as build_shards.py stores them
#                (256 short side, a keyframe every 16 frames) loaded as 16x224 with K400's 16x4 sampling, one
#                worker per core up to one per shard: CPU ms per clip, and the cores one GPU needs at the
#                model rate of turbo_speed's keep-0.25 step
# Every run reports only what it measured: the results an earlier run left in OUT (step logs, JSONs, the
# demo and compile run dirs, which a rerun would otherwise resume as finished) are deleted first; the
# generated clips in OUT/real (and OUT/data with --smoke) are kept, rebuilt when their settings differ.
# OUT/gpu_check.json holds every step's status and figures; OUT/summary.txt is the short reading.
# Exit status: 0 when no step failed (a step this checkout lacks is skipped), 1 otherwise (the JSON says which
# failed and why), 2 when the env step stops the check.
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

STEPS=(env demo compile_train batch turbo_speed compiled throughput loader)
SMOKE=0 ONLY=""
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --smoke) SMOKE=1; shift ;;
        --only) ONLY=",${2:?--only needs a comma-separated list of steps},"; shift 2 ;;
        -*) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) break ;;
    esac
done
for step in ${ONLY//,/ }; do
    [[ " ${STEPS[*]} " == *" $step "* ]] || { echo "gpu_check: --only $step: not a step (${STEPS[*]})" >&2; exit 2; }
done
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(realpath -m "${1:-$ROOT/bench/out/gpu_check}")
mkdir -p "$OUT"
cd "$ROOT"
PY=${PYTHON:-python}
STATUS=()   # "step=ok|failed|skipped" lines, read by the report

log() { echo "[gpu_check $(date '+%T')] $*"; }

# A fresh report: remove what this script wrote into OUT before (never anything else).
for step in "${STEPS[@]}"; do rm -f "$OUT/$step.log"; done
rm -rf "$OUT/demo_run" "$OUT/compile_run"
rm -f "$OUT"/{gpu_check.json,summary.txt,status.txt,batch.txt,data.log,nvidia-smi.log,env.json,compile_zero2_accum2.json} \
    "$OUT"/{turbo_speed.json,turbo_speed_compiled.json,train_throughput.json,loader.json}

# wanted STEP: whether --only (if given) names STEP; a step left out is recorded as skipped
wanted() {
    [[ -z $ONLY || $ONLY == *",$1,"* ]] && return 0
    STATUS+=("$1=skipped (not in --only)")
    return 1
}

# run STEP CMD...: run CMD with its output in OUT/STEP.log, record the outcome
run() {
    local step=$1 rc
    shift
    log "$step: $*"
    "$@" >"$OUT/$step.log" 2>&1
    rc=$?
    if ((rc == 0)); then STATUS+=("$step=ok"); else STATUS+=("$step=failed (exit $rc, see $OUT/$step.log)"); fi
    log "$step: exit $rc"
    return $rc
}

if ((SMOKE)); then
    export DS_ACCELERATOR=cpu CUDA_VISIBLE_DEVICES=""
    DEVICE=cpu BATCHES="1 2"
    VIT=(--width 64 --depth 2 --heads 2 --frames 4 --size 32 --patch 16 --repeats 1)
    DATA_SETS=(--set data.train="$OUT/data/train" --set data.val="$OUT/data/val" --set data.generate_demo=false
        --set eval.batch_size=16 --set data.shuffle_buffer=8)
    DEMO_SETS=(--set train.steps=4 --set train.warmup_steps=1 --set train.log_every=2 --set train.eval_every=4
        --set train.ckpt_every=4)
    COMPILE_STEPS=4
    # more workers than the clips' shards: the loader step must size its workers to the shards
    LOADER=(--real-clips 2 --real-seconds 1 --real-shard-size 2 --frames 4 --size 32 --batches 2 --batch-size 2
        --repeats 1 --workers 4)
else
    DEVICE=cuda BATCHES="4 8 16 32 64 128 256"
    VIT=(--width 768 --depth 12 --heads 12 --frames 16 --size 224 --patch 16)   # ViT-B/16, 1568 tokens
    DATA_SETS=(--set data.train="$ROOT/data/demo/train" --set data.val="$ROOT/data/demo/val")
    DEMO_SETS=()
    COMPILE_STEPS=40
    # 16 clips of 10 s, one per shard: up to 16 workers read them (one per core, never more than shards)
    LOADER=(--real-clips 16 --real-seconds 10 --real-shard-size 1 --workers "$(nproc)")
fi
ds_launch() { deepspeed --num_gpus "$RANKS" --master_port "$($PY -c 'from turbo_ds.engine.distributed import free_port; print(free_port())')" "$@"; }

# ---------------------------------------------------------------- env: which devices torch can train on
{ nvidia-smi || echo "no nvidia-smi"; } >"$OUT/nvidia-smi.log" 2>&1
if ! run env "$PY" bench/gpu_env.py "$OUT/env.json"; then
    tail -n 1 "$OUT/env.log" >&2   # the one line: why nothing can run on the GPUs
    exit 2
fi
if ((SMOKE)); then
    RANKS=2
else
    RANKS=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["gpu_count"])' "$OUT/env.json")
    ((RANKS > 0)) || { echo "gpu_check: torch sees no GPU ($(tail -n 1 "$OUT/env.log")); for a CPU plumbing check use --smoke" >&2; exit 2; }
fi

# ---------------------------------------------------------------- demo training, one rank per GPU
if ((SMOKE)); then
    $PY data_prep/make_demo_data.py --out "$OUT/data" --train 64 --val 32 --shard-size 16 >"$OUT/data.log" 2>&1
fi
if wanted demo; then
    run demo ds_launch turbo_ds/train.py --ds_config ds_configs/zero2_bf16.json --config configs/demo_action_cls.yaml \
        --set run_dir="$OUT/demo_run" "${DATA_SETS[@]}" "${DEMO_SETS[@]}"
fi

# ---------------------------------------------------------------- model.compile through the trainer
# ZeRO-2 with gradient accumulation 2 (a copy of the shipped JSON), a checkpoint half way, then a resume.
compile_train() {
    local json="$OUT/compile_zero2_accum2.json" half=$((COMPILE_STEPS / 2)) stop
    $PY -c 'import json, sys; ds = json.load(open(sys.argv[1])); ds["gradient_accumulation_steps"] = 2
json.dump(ds, open(sys.argv[2], "w"), indent=1)' ds_configs/zero2_bf16.json "$json" || return 1
    for stop in "$half" null; do
        ds_launch turbo_ds/train.py --ds_config "$json" --config configs/demo_action_cls.yaml \
            --set run_dir="$OUT/compile_run" --set model.compile=true "${DATA_SETS[@]}" \
            --set train.steps="$COMPILE_STEPS" --set train.stop_at_step="$stop" --set train.warmup_steps=1 \
            --set train.log_every="$half" --set train.ckpt_every="$half" --set train.eval_every="$COMPILE_STEPS" || return 1
    done
    grep -q "resuming from checkpoint" "$OUT/compile_run/train.log" && [[ -f $OUT/compile_run/COMPLETED ]]
}
if wanted compile_train; then
    run compile_train compile_train
fi

# ---------------------------------------------------------------- the largest batch that fits
BATCH=""
if wanted batch; then
    for b in $BATCHES; do
        if $PY bench/turbo_speed.py "${VIT[@]}" --device "$DEVICE" --trainer-precision --impls turbo_ds \
            --keep-ratios 1.0 --batch "$b" --warmup 1 --repeats 1 >>"$OUT/batch.log" 2>&1; then
            BATCH=$b
        else
            break
        fi
    done
    if [[ -n $BATCH ]]; then
        STATUS+=("batch=ok")
        log "batch: $BATCH"
        echo "$BATCH" >"$OUT/batch.txt"
    else
        STATUS+=("batch=failed (not even batch ${BATCHES%% *} fits, see $OUT/batch.log)")
    fi
fi

# ---------------------------------------------------------------- bare step: keep ratios, vs VideoMAE
for step in turbo_speed compiled; do
    wanted $step || continue
    if [[ -z $BATCH ]]; then
        STATUS+=("$step=skipped (no batch measured)")
    elif [[ $step == turbo_speed ]]; then
        run turbo_speed $PY bench/turbo_speed.py "${VIT[@]}" --device "$DEVICE" --trainer-precision --batch "$BATCH" \
            --keep-ratios 1.0 0.5 0.25 --json "$OUT/turbo_speed.json"
    else
        run compiled $PY bench/turbo_speed.py "${VIT[@]}" --device "$DEVICE" --trainer-precision --compile \
            --batch "$BATCH" --keep-ratios 1.0 0.25 --json "$OUT/turbo_speed_compiled.json"
    fi
done

# ---------------------------------------------------------------- the trainer's own overhead
if wanted throughput; then
    if [[ -f bench/train_throughput.py ]]; then
        run throughput $PY bench/train_throughput.py --device "$DEVICE" --json "$OUT/train_throughput.json" \
            $( ((SMOKE)) && echo --quick)
    else
        STATUS+=("throughput=skipped (bench/train_throughput.py is not in this checkout)")
    fi
fi

# ---------------------------------------------------------------- the loader at the GPU's appetite
RATE=$($PY - "$OUT/turbo_speed.json" <<'EOF' 2>/dev/null
import json, sys
runs = json.load(open(sys.argv[1]))
r = min((r for r in runs["results"] if r["impl"] == "turbo_ds"), key=lambda r: r["keep_ratio"])
print(f"{runs['settings']['batch'] / r['step_s']:.1f}")
EOF
)
if wanted loader; then
    run loader $PY bench/loader_speed.py --make-real "$OUT/real" --skip-raw --json "$OUT/loader.json" "${LOADER[@]}" \
        ${RATE:+--model-clips-per-s "$RATE"}
fi

# ---------------------------------------------------------------- report
printf '%s\n' "${STATUS[@]}" >"$OUT/status.txt"
$PY - "$OUT" "$DEVICE" "$RANKS" "${RATE:-}" <<'EOF'
import json, statistics, sys
from pathlib import Path

out, device, ranks, rate = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
status = dict(line.split("=", 1) for line in (out / "status.txt").read_text().splitlines())


def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.is_file() else None


def run_summary(run_dir):
    """The last eval, median clips/s, peak memory and whether it resumed, from a run dir's files."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return None
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    evals, train = [r for r in records if "eval/top1" in r], [r for r in records if "train/loss" in r]
    log = (run_dir / "train.log").read_text() if (run_dir / "train.log").is_file() else ""
    return {"eval_top1": evals[-1]["eval/top1"] if evals else None,
            "chance": evals[-1]["eval/chance"] if evals else None,
            "losses": {r["step"]: r["train/loss"] for r in train},
            "clips_per_s": statistics.median(r["train/clips_per_s"] for r in train) if train else None,
            "peak_mem_mb": max(r["train/peak_mem_mb"] for r in train) if train else None,
            "resumed": "resuming from checkpoint" in log, "completed": (run_dir / "COMPLETED").is_file(),
            "device": next((line.split("device: ", 1)[1] for line in log.splitlines() if "device: " in line), None)}


report = {"device": device, "ranks": ranks, "status": status, "env": load("env.json"),
          "demo": run_summary(out / "demo_run"), "compile_train": run_summary(out / "compile_run"),
          "batch": int((out / "batch.txt").read_text()) if (out / "batch.txt").is_file() else None,
          "turbo_speed": load("turbo_speed.json"), "compiled": load("turbo_speed_compiled.json"),
          "train_throughput": load("train_throughput.json"),
          "loader": load("loader.json"), "model_clips_per_s_keep025": float(rate) if rate else None}
(out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")

lines = [f"gpu_check on {device}, {ranks} rank(s): " + ", ".join(f"{k} {v.split(' ')[0]}" for k, v in status.items())]
if report["env"]:
    e = report["env"]
    lines.append(f"  torch {e['torch']}, CUDA {e['cuda']}, NCCL {e['nccl']}, DeepSpeed {e['deepspeed']}; "
                 f"trains on: {e['devices']}")
for name in ("demo", "compile_train"):
    d = report[name]
    if d and d["clips_per_s"] is not None:
        lines.append(f"  {name}: eval top-1 {d['eval_top1']} (chance {d['chance']}), {d['clips_per_s']:.0f} clips/s, "
                     f"peak {d['peak_mem_mb']:.0f} MB per rank"
                     + (f"; resumed, losses {', '.join(f'{s}: {v:.4f}' for s, v in d['losses'].items())}"
                        if d["resumed"] else ""))
if report["turbo_speed"]:
    rows = report["turbo_speed"]["results"]
    ref = {r["impl"]: r for r in rows if r["keep_ratio"] == 1.0}
    lines.append(f"  bare step at batch {report['batch']} (trainer's precision):")
    for r in rows:
        base = ref.get(r["impl"])
        lines.append(f"    {r['impl']:<9} keep {r['keep_ratio']:<5} {r['step_s'] * 1e3:8.1f} ms"
                     + (f"  {base['step_s'] / r['step_s']:.2f}x faster, {r['peak_mem_mb'] / base['peak_mem_mb']:.2f}x "
                        f"memory than keep 1.0" if base and r is not base and base["peak_mem_mb"] > 0 else ""))
for name, label in (("turbo_speed", "eager"), ("compiled", "compiled")):
    for row in report[name]["summary"] if report[name] else []:
        if "vs_videomae" in row:
            lines.append(f"  turbo_ds {label} keep {row['keep_ratio']:g}: {row['vs_videomae'][0]:.2f}x VideoMAE's step time")
if report["loader"]:
    ld = report["loader"]
    ms = ld["loader_cpu_ms_per_clip"]
    lines.append(f"  loader: {ld['loader_clips_per_s']:.0f} clips/s with {ld['workers']} worker(s) ({ld['workers_requested']} "
                 f"asked, {ld['shard_count']} shard(s)), {ms:.1f} CPU ms per {ld['frames']}x{ld['size']} real-content clip"
                 + (f"; at the keep-0.25 model rate of {rate} clips/s per GPU that is {float(rate) * ms / 1e3:.1f} "
                    "cores per GPU" if rate else ""))
for k, v in status.items():
    if not v.startswith("ok"):
        lines.append(f"  {k}: {v}")
(out / "summary.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"wrote {out / 'gpu_check.json'} and {out / 'summary.txt'}")
EOF
if grep -q '=failed' "$OUT/status.txt"; then exit 1; fi
exit 0
