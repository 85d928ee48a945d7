#!/usr/bin/env bash
# The GPU check, one command on a machine with a CUDA GPU (meant to fit 8 minutes on one H100-class GPU; not yet
# timed on one):
#   1. the gpu tests (tests/test_gpu.py): default-precision fit and resume, 16-mixed with loss scaling, compiled
#      training, fused attention with dropout against the math path, DDP on one device, compiled decoding = eager;
#   2. configs/gpt_lecture.yaml for its 5,000 steps: wall time, tokens/s, MFU, best val loss;
#   3. generation from that checkpoint: tokens/s for 500 characters, eager and compiled.
# bash benchmarks/gpu_check.sh --cpu-smoke runs the same steps on the CPU with a tiny stand-in model and 20 steps
# (the gpu tests are then collected and skipped; decoding eager only), so CI proves the script itself works.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=false
case "${1:-}" in
  --cpu-smoke) smoke=true ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--cpu-smoke]" >&2; exit 2 ;;
esac
python=${PYTHON:-python}
root=$(mktemp -d "${TMPDIR:-/tmp}/chargpt-gpu-check.XXXXXX")
trap 'rm -rf "$root"' EXIT

if $smoke; then
  train_args=(--trainer.accelerator cpu --trainer.max_steps 20 --trainer.val_check_interval 10
              --model.n_layer 1 --model.n_head 2 --model.n_embd 16 --model.compile false
              --data.block_size 16 --data.batch_size 4 --data.val_batches 2 --sample.every_n_steps 0
              --trainer.log_every_n_steps 5)
  generate_args=(--device cpu --max_new_tokens 50)
  modes=(eager)  # compiling takes ~40 s on a CPU, and the tests cover it
else
  if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device here; run it on a GPU machine, or pass --cpu-smoke" >&2
    exit 2
  fi
  train_args=()
  generate_args=(--device cuda --max_new_tokens 500)
  modes=(eager --compile)
fi

"$python" - <<'EOF'
import torch
print(f"== machine: torch {torch.__version__}", end="")
if torch.cuda.is_available():
    cap = torch.cuda.get_device_capability()
    print(f", {torch.cuda.get_device_name()} (compute capability {cap[0]}.{cap[1]}), CUDA {torch.version.cuda}")
else:
    print(", no CUDA device (CPU smoke run)")
EOF

echo "== 1. gpu tests"
"$python" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py -rs

echo "== 2. configs/gpt_lecture.yaml"
log="$root/train.log"
start=$(date +%s)
"$python" -m src.train fit --config configs/gpt_lecture.yaml --trainer.default_root_dir "$root" \
  --run_name gpu_check --trainer.enable_progress_bar false ${train_args[@]+"${train_args[@]}"} >"$log" 2>&1 \
  || { tail -n 40 "$log"; echo "gpu_check: training failed" >&2; exit 1; }
wall=$(( $(date +%s) - start ))
"$python" - "$log" "$root/gpu_check/checkpoints" "$wall" <<'EOF'
import re, statistics, sys
from pathlib import Path

log, ckpts, wall = Path(sys.argv[1]).read_text(), Path(sys.argv[2]), int(sys.argv[3])
rates = [float(r.replace(",", "")) for r in re.findall(r"\| ([\d,]+) tokens/s \|", log)]
mfus = [float(m) for m in re.findall(r"\| mfu ([\d.]+)% \|", log)]
peak = re.search(r"MFU peak: .*", log)
best = sorted(ckpts.glob("best-*.ckpt"))
val = re.search(r"val_loss=([\d.]+)\.ckpt", best[0].name).group(1) if best else "none"
print(f"wall {wall // 60}:{wall % 60:02d}, start to finish")
print(f"tokens/s {statistics.median(rates):,.0f} (median of {len(rates)} log lines)" if rates else "tokens/s: none logged")
print(f"mfu {statistics.median(mfus):.1f}% ({peak.group(0) if peak else 'no peak logged'})" if mfus else "mfu: none")
print(f"best val loss {val}")
EOF

echo "== 3. generation from the checkpoint"
ckpt="$root/gpu_check/checkpoints/last.ckpt"
for mode in "${modes[@]}"; do
  extra=(); [ "$mode" = eager ] || extra=("$mode")
  "$python" -m src.generate --ckpt_path "$ckpt" --seed 1 "${generate_args[@]}" ${extra[@]+"${extra[@]}"} 2>&1 >/dev/null \
    | grep "tokens/s" | sed "s/^/$mode: /"
done
echo "== gpu_check: done"
