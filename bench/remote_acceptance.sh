#!/usr/bin/env bash
# Issue #13's acceptance on the demo: the same 2-rank run from nginx on 127.0.0.1 with nginx stopped
# for OUTAGE_S seconds once the run logs step OUTAGE_STEP and started again, from nginx, and from
# local disk; then a summary (eval top-1, whether the losses match the disk run, data/read_retries,
# data/skipped_shards, the outage run's data: log lines). Outage run first: its figures come soonest.
#
# A demo epoch is 64 steps (2048 clips / 32 a step), and prefetch fetches an epoch's last shards
# ~10 steps before it ends, so an outage hits reads when it spans an epoch start: OUTAGE_STEP (a
# multiple of train.log_every, 50) a few steps before one, e.g. 250 (epoch 4 starts at step 256).
#
#   bench/remote_acceptance.sh                 # 600 steps, outage at step 250 for 20 s (~45 min on 2 busy cores)
#   STEPS=150 OUTAGE_STEP=50 EVAL_EVERY=150 bench/remote_acceptance.sh   # shorter (eval still near chance)
#
# Runs go to $OUT/{outage,http,disk} (default runs/remote_acceptance, replaced); needs nginx
# (apt-get install nginx-light) and the demo data (generated here if data/demo is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
STEPS=${STEPS:-600} OUTAGE_STEP=${OUTAGE_STEP:-250} OUTAGE_S=${OUTAGE_S:-20} EVAL_EVERY=${EVAL_EVERY:-200}
OUT=${OUT:-runs/remote_acceptance}
DS_CONFIG=ds_configs/zero2_bf16.json CONFIG=configs/demo_action_cls.yaml
rm -rf "$OUT" && mkdir -p "$OUT/nginx"
[ -f data/demo/train/manifest.json ] || python data_prep/make_demo_data.py --out data/demo

train() {  # train RUN [--set ...]: the acceptance command, with this script's run length
  local run=$1; shift
  echo "== $run: $(date -u +%T)"
  deepspeed --num_gpus 2 --master_port "$(python -c 'from turbo_ds.engine.distributed import free_port; print(free_port())')" \
    turbo_ds/train.py --ds_config "$DS_CONFIG" --config "$CONFIG" --set "run_dir=$OUT/$run" \
    --set "train.steps=$STEPS" --set "train.eval_every=$EVAL_EVERY" --set "train.ckpt_every=$EVAL_EVERY" \
    --set data.generate_demo=false "$@" > "$OUT/$run.out" 2>&1 || { echo "$run failed: see $OUT/$run.out"; tail -5 "$OUT/$run.out"; }
}

# nginx serving data/demo (tests/servers.py: temp config, free port); it writes its URL to $OUT/nginx/url,
# stops for OUTAGE_S s once $OUT/outage/metrics.jsonl has step OUTAGE_STEP, starts again, and
# exits when $OUT/nginx/done appears.
python - "$OUT" "$OUTAGE_STEP" "$OUTAGE_S" <<'EOF' &
import sys, time
from pathlib import Path
from tests.servers import Nginx

out, step, seconds = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
metrics, done = out / "outage" / "metrics.jsonl", out / "nginx" / "done"
with Nginx(Path("data/demo").resolve(), (out / "nginx").resolve()) as web:
    (out / "nginx" / "url").write_text(web.url)
    while not done.exists():
        if metrics.is_file() and f'"step": {step},' in metrics.read_text():
            web.stop()
            print(f"== nginx stopped at step {step} ({time.strftime('%T', time.gmtime())} UTC) for {seconds:g} s", flush=True)
            time.sleep(seconds)
            web.start()
            print(f"== nginx started again ({time.strftime('%T', time.gmtime())} UTC)", flush=True)
            while not done.exists():
                time.sleep(0.5)
        time.sleep(0.05)
EOF
server=$!
trap 'touch "$OUT/nginx/done"; wait $server' EXIT
for _ in $(seq 100); do [ -f "$OUT/nginx/url" ] && break; sleep 0.1; done
URL=$(cat "$OUT/nginx/url")
echo "demo shards served at $URL"

train outage --set "data.train=$URL/train" --set "data.val=$URL/val"
train http --set "data.train=$URL/train" --set "data.val=$URL/val"
train disk

python - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
runs = {}
for run in ("disk", "http", "outage"):  # disk first: the others compare with it
    path = out / run / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    runs[run] = records
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    evals = [(r["step"], r["eval/top1"]) for r in records if "eval/top1" in r]
    last = next((r for r in reversed(records) if "data/read_retries" in r), {})
    same = losses == [r["train/loss"] for r in runs["disk"] if "train/loss" in r]
    print(f"{run:7s} steps {records[-1]['step'] if records else '-'} | eval top-1 {evals} | losses "
          f"{'identical to disk' if same else 'differ from disk'} | data/read_retries {last.get('data/read_retries')} "
          f"| data/skipped_shards {last.get('data/skipped_shards')} | COMPLETED {(out / run / 'COMPLETED').exists()}")
log = out / "outage" / "train.log"
lines = log.read_text().splitlines() if log.is_file() else []
steps = [line for line in lines if line.startswith("step ")]
for line in [line for line in lines if line.startswith("data")] + steps[-1:]:  # its reader events, its last step
    print("  outage log:", line)
EOF
