#!/usr/bin/env bash
# The first thing to run on a CUDA machine: does turbo_ds work there, and how fast is it?
#
#   bash bench/gpu_check.sh [OUT]            all GPUs of this machine (default OUT: bench/out/gpu_check)
#   bash bench/gpu_check.sh --smoke OUT      the same steps with tiny settings on the CPU: checks the
#                                            plumbing on a machine without a GPU (the test suite runs it)
#
# Steps (each one's output in OUT/<step>.log; a failing step is recorded and the next one runs):
#   env          nvidia-smi, torch / CUDA / NCCL / DeepSpeed versions, GPU count
#   demo         the README demo on NCCL, one rank per GPU (ZeRO-2, bf16): eval top-1, clips/s, peak memory
#   batch        the largest batch of ViT-B/16 at 16x224^2 (keep 1.0, bf16 autocast) that fits one GPU
#   turbo_speed  bench/turbo_speed.py --device cuda --amp at that batch: step time and memory at keep
#                1.0 / 0.5 / 0.25, turbo_ds vs transformers' VideoMAE
#   compiled     the same at keep 1.0 / 0.25 with --compile (model.compile: true) vs VideoMAE eager
#   throughput   bench/train_throughput.py (bare step vs the trainer), when this checkout has it
#   loader       bench/loader_speed.py on the demo shards: clips/s per core, and the cores one GPU needs
#                at the model rate of turbo_speed's keep-0.25 step
# OUT/gpu_check.json holds every step's status and figures; OUT/summary.txt is the short reading.
# Exit status: 0 when no step failed (a step this checkout lacks is skipped), 1 otherwise; the JSON says which
# failed and why.
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

SMOKE=0
case ${1:-} in
    -h | --help) usage; exit 0 ;;
    --smoke) SMOKE=1; shift ;;
esac
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(realpath -m "${1:-$ROOT/bench/out/gpu_check}")
mkdir -p "$OUT"
cd "$ROOT"
PY=${PYTHON:-python}
STATUS=()   # "step=ok|failed|skipped" lines, read by the report

log() { echo "[gpu_check $(date '+%T')] $*"; }

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
    DEVICE=cpu RANKS=2 BATCHES="1 2"
    VIT=(--width 64 --depth 2 --heads 2 --frames 4 --size 32 --patch 16 --repeats 1)
    DEMO_SETS=(--set data.train="$OUT/data/train" --set data.val="$OUT/data/val" --set data.generate_demo=false
        --set train.steps=4 --set train.warmup_steps=1 --set train.log_every=2 --set train.eval_every=4
        --set train.ckpt_every=4 --set eval.batch_size=16 --set data.shuffle_buffer=8)
    LOADER=(--batches 4 --repeats 1 --workers 1)
else
    DEVICE=cuda BATCHES="4 8 16 32 64 128 256"
    RANKS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ') || RANKS=0
    ((RANKS > 0)) || { echo "gpu_check: nvidia-smi lists no GPU; for a CPU plumbing check use --smoke" >&2; exit 2; }
    VIT=(--width 768 --depth 12 --heads 12 --frames 16 --size 224 --patch 16)   # ViT-B/16, 1568 tokens
    DEMO_SETS=()
    LOADER=(--size 224 --workers "$(nproc)")
fi

# ---------------------------------------------------------------- env
ENV_PY='import json, torch, deepspeed
cuda = torch.cuda.is_available()
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "deepspeed": deepspeed.__version__,
                  "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                  "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None}))'
run env bash -c 'nvidia-smi 2>/dev/null || echo "no nvidia-smi"; "$0" -c "$1"' "$PY" "$ENV_PY"

# ---------------------------------------------------------------- demo training, one rank per GPU
if ((SMOKE)); then
    $PY data_prep/make_demo_data.py --out "$OUT/data" --train 64 --val 32 --shard-size 16 >"$OUT/data.log" 2>&1
else
    DEMO_SETS=(--set data.train="$ROOT/data/demo/train" --set data.val="$ROOT/data/demo/val")
fi
run demo deepspeed --num_gpus "$RANKS" --master_port "$($PY -c 'from turbo_ds.engine.distributed import free_port; print(free_port())')" \
    turbo_ds/train.py --ds_config ds_configs/zero2_bf16.json --config configs/demo_action_cls.yaml \
    --set run_dir="$OUT/demo_run" "${DEMO_SETS[@]}"

# ---------------------------------------------------------------- the largest batch that fits
BATCH=""
for b in $BATCHES; do
    if $PY bench/turbo_speed.py "${VIT[@]}" --device "$DEVICE" --amp --impls turbo_ds --keep-ratios 1.0 \
        --batch "$b" --warmup 1 --repeats 1 >>"$OUT/batch.log" 2>&1; then
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

# ---------------------------------------------------------------- bare step: keep ratios, vs VideoMAE
if [[ -n $BATCH ]]; then
    run turbo_speed $PY bench/turbo_speed.py "${VIT[@]}" --device "$DEVICE" --amp --batch "$BATCH" \
        --keep-ratios 1.0 0.5 0.25 --json "$OUT/turbo_speed.json"
    run compiled $PY bench/turbo_speed.py "${VIT[@]}" --device "$DEVICE" --amp --compile --batch "$BATCH" \
        --keep-ratios 1.0 0.25 --json "$OUT/turbo_speed_compiled.json"
else
    STATUS+=("turbo_speed=skipped (no batch fits)" "compiled=skipped (no batch fits)")
fi

# ---------------------------------------------------------------- the trainer's own overhead
if [[ -f bench/train_throughput.py ]]; then
    run throughput $PY bench/train_throughput.py --device "$DEVICE" --json "$OUT/train_throughput.json" \
        $( ((SMOKE)) && echo --quick)
else
    STATUS+=("throughput=skipped (bench/train_throughput.py is not in this checkout)")
fi

# ---------------------------------------------------------------- the loader at the GPU's appetite
RATE=$($PY - "$OUT/turbo_speed.json" <<'EOF' 2>/dev/null
import json, sys
runs = json.load(open(sys.argv[1]))
r = min((r for r in runs["results"] if r["impl"] == "turbo_ds"), key=lambda r: r["keep_ratio"])
print(f"{runs['settings']['batch'] / r['step_s']:.1f}")
EOF
)
SHARDS=$( ((SMOKE)) && echo "$OUT/data/train" || echo "$ROOT/data/demo/train")
EXTRA=()
if [[ -n $RATE ]] && $PY bench/loader_speed.py --help 2>/dev/null | grep -q -- --model-clips-per-s; then
    EXTRA=(--model-clips-per-s "$RATE")
fi
run loader $PY bench/loader_speed.py --shards "$SHARDS" --json "$OUT/loader.json" "${LOADER[@]}" "${EXTRA[@]}"

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


report = {"device": device, "ranks": ranks, "status": status, "env": None, "demo": None,
          "batch": int((out / "batch.txt").read_text()) if (out / "batch.txt").is_file() else None,
          "turbo_speed": load("turbo_speed.json"), "compiled": load("turbo_speed_compiled.json"),
          "train_throughput": load("train_throughput.json"),
          "loader": load("loader.json"), "model_clips_per_s_keep025": float(rate) if rate else None}
env_lines = [line for line in (out / "env.log").read_text().splitlines() if line.startswith("{")]
report["env"] = json.loads(env_lines[-1]) if env_lines else None
metrics = out / "demo_run" / "metrics.jsonl"
if metrics.is_file():
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    evals, train = [r for r in records if "eval/top1" in r], [r for r in records if "train/loss" in r]
    report["demo"] = {"eval_top1": evals[-1]["eval/top1"] if evals else None,
                      "chance": evals[-1]["eval/chance"] if evals else None,
                      "clips_per_s": statistics.median(r["train/clips_per_s"] for r in train) if train else None,
                      "peak_mem_mb": max(r["train/peak_mem_mb"] for r in train) if train else None}
(out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")

lines = [f"gpu_check on {device}, {ranks} rank(s): " + ", ".join(f"{k} {v.split(' ')[0]}" for k, v in status.items())]
if report["env"]:
    lines.append(f"  torch {report['env']['torch']}, CUDA {report['env']['cuda']}, NCCL {report['env']['nccl']}, "
                 f"DeepSpeed {report['env']['deepspeed']}, GPUs: {', '.join(report['env']['gpus']) or 'none'}")
if report["demo"]:
    d = report["demo"]
    lines.append(f"  demo: eval top-1 {d['eval_top1']} (chance {d['chance']}), {d['clips_per_s']:.0f} clips/s, "
                 f"peak {d['peak_mem_mb']:.0f} MB per rank")
if report["turbo_speed"]:
    rows = report["turbo_speed"]["results"]
    ref = {r["impl"]: r for r in rows if r["keep_ratio"] == 1.0}
    lines.append(f"  bare step at batch {report['batch']}:")
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
    ms = report["loader"]["loader_cpu_ms_per_clip"]
    lines.append(f"  loader: {report['loader']['loader_clips_per_s']:.0f} clips/s with {report['loader']['workers']} "
                 f"worker(s), {ms:.1f} CPU ms per clip"
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
