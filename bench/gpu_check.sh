#!/usr/bin/env bash
# The GPU path end to end, in one call of a few minutes: install the `gpu` extra, train the
# demo pair on the GPU, serve it with the FAISS GPU index, run the service agreement tests
# against the GPU, time the candidate search and the scalable decoding, and write what was
# seen to one file (default bench/results/gpu_check.json).
#
#   bash bench/gpu_check.sh [OUT_JSON]
#
# On a machine without an NVIDIA GPU every step runs on the CPU instead and the file says so
# (`"gpu": false`): that fallback is what CI exercises.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${1:-bench/results/gpu_check.json}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PY=${PYTHON:-.venv/bin/python}
mimea() { "$PY" -m mimea_cli "$@"; }

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  GPU=1
  DEVICE=cuda
  # The GPU build of faiss replaces the CPU one; torch stays as installed.
  "$PY" -m pip install --quiet -e '.[gpu]' || echo "gpu_check: the gpu extra did not install"
else
  GPU=0
  DEVICE=cpu
fi
echo "gpu_check: device $DEVICE"

log() { echo "gpu_check: $*" >&2; }
step_start=$(date +%s.%N)
elapsed() { python3 -c "import sys; print(round($(date +%s.%N) - $step_start, 2))"; }

log "demo data"
mimea demo-data --out "$WORK/data" --entities 2000 >/dev/null
step_start=$(date +%s.%N)
log "training on $DEVICE"
mimea train --data "$WORK/data" --out "$WORK/checkpoint" --config configs/demo.toml \
  --device "$DEVICE" --quiet > "$WORK/train.txt"
TRAIN_S=$(elapsed)

log "service agreement tests on $DEVICE"
step_start=$(date +%s.%N)
set +e
MIMEA_DEVICE=$DEVICE "$PY" -m pytest -q -p no:cacheprovider tests/service/test_agreement.py \
  > "$WORK/agreement.txt" 2>&1
AGREEMENT_RC=$?
set -e
AGREEMENT_S=$(elapsed)

log "search and decoding timings"
GPU=$GPU DEVICE=$DEVICE TRAIN_S=$TRAIN_S AGREEMENT_RC=$AGREEMENT_RC AGREEMENT_S=$AGREEMENT_S \
  WORK=$WORK OUT=$OUT "$PY" - <<'EOF'
import json
import os
import statistics
import time
from pathlib import Path

import torch

from mimea.model.checkpoint import load_checkpoint
from mimea.model.ranking import serving_terms
from mimea.model.similarity import build_ip_index, gpu_count, normalise
from mimea.service.aligner import Aligner
from mimea.service.settings import Settings

work = Path(os.environ["WORK"])
device = os.environ["DEVICE"]
checkpoint = work / "checkpoint"
aligner = Aligner.load(Settings(checkpoint=checkpoint, device=device))
info = aligner.info()
queries = list(range(min(512, aligner.directory.sizes[1])))
latencies = []
for row in queries[:200]:
    start = time.perf_counter()
    aligner.candidates_batch([(row, 10, info.get("default_metric", "csls"))])
    latencies.append((time.perf_counter() - start) * 1000)
start = time.perf_counter()
aligner.candidates_batch([(row, 10, info.get("default_metric", "csls")) for row in queries])
batch_ms = (time.perf_counter() - start) * 1000

ckpt = load_checkpoint(checkpoint)
joint = ckpt.embeddings.joint
kgs = torch.as_tensor(ckpt.entities.kgs)
start = time.perf_counter()
serving_terms(joint, kgs, k=3, candidates=100, reg=0.02, iterations=20)
terms_s = time.perf_counter() - start
planted = normalise(torch.randn(100_000, 128))
start = time.perf_counter()
index = build_ip_index(planted, use_gpu=bool(int(os.environ["GPU"])))
index.search(planted[:20_000], 50)
search_s = time.perf_counter() - start

train = (work / "train.txt").read_text()
report = {
    "gpu": bool(int(os.environ["GPU"])),
    "device": device,
    "torch_cuda": torch.cuda.is_available(),
    "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "faiss_gpus": gpu_count(),
    "train_s": float(os.environ["TRAIN_S"]),
    "train_output": train.splitlines()[-7:],
    "agreement_tests": {"exit_code": int(os.environ["AGREEMENT_RC"]),
                        "seconds": float(os.environ["AGREEMENT_S"]),
                        "summary": (work / "agreement.txt").read_text().splitlines()[-1:]},
    "service": {"device": info["device"], "index_on_gpu": info["index_on_gpu"],
                "single_query_ms_median": round(statistics.median(latencies), 3),
                "batch_512_ms": round(batch_ms, 2)},
    "serving_terms_s": round(terms_s, 3),
    "search_100k_keys_20k_queries_k50_s": round(search_s, 3),
}
Path(os.environ["OUT"]).parent.mkdir(parents=True, exist_ok=True)
Path(os.environ["OUT"]).write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps(report, indent=2))
EOF
test "$AGREEMENT_RC" -eq 0
