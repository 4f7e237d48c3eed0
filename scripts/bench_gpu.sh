#!/usr/bin/env bash
# The GPU benchmark, as one command for a machine with an NVIDIA GPU: builds llama.cpp for CUDA (through
# the install path users take), then serving at 1 to 16 clients, the daemon against raw llama.cpp, an
# export verified on this machine, and a LoRA training step in the precision the GPU takes (bf16 where it
# has it), and prints one table named after the device. Each step runs on when another fails, so one
# lease of a GPU yields every figure it can.
#
#     bash scripts/bench_gpu.sh [--out DIR] [--quick]
#
# --quick: fewer clients, requests and steps (a first look, or checking the script itself).
# ATHANOR_GPU=cpu runs the same steps on the CPU build, where no GPU is (the figures are then the CPU's).
set -uo pipefail
cd "$(dirname "$0")/.."
out=bench-out/gpu
quick=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --quick) quick=1; shift ;;
        *) echo "bench_gpu.sh: unknown argument $1 (use --out DIR, --quick)" >&2; exit 2 ;;
    esac
done
if [ "${ATHANOR_GPU:-auto}" != "cpu" ] && ! nvidia-smi -L >/dev/null 2>&1; then
    echo "bench_gpu.sh: no NVIDIA GPU answers nvidia-smi; run it on the GPU machine, or set ATHANOR_GPU=cpu" \
         "to check the script on the CPU" >&2
    exit 1
fi
export ATHANOR_GPU="${ATHANOR_GPU:-cuda}"
mkdir -p "$out"
source scripts/lib/install.sh
install_athanor "export" || { echo "bench_gpu.sh: install failed; see above" >&2; exit 1; }

failed=()
step() {  # step NAME COMMAND...: run one measurement, its output kept in $out/NAME.log
    local name="$1"; shift
    echo "== $name: $*"
    if "$@" 2>&1 | tee "$out/$name.log"; then return 0; fi
    failed+=("$name")
    echo "bench_gpu.sh: $name failed (its log: $out/$name.log); going on" >&2
}

if [ "$quick" = 1 ]; then clients=1,8; requests=1; reps=1; export_steps=4; train_examples=16
else clients=1,2,4,8,16; requests=3; reps=5; export_steps=20; train_examples=256; fi
# The daemon on the GPU offloads every layer ([student].n_gpu_layers = -1 is its default).
# doctor's exit status also counts checks that do not concern this benchmark (no daemon running): its
# llama.cpp and onnxruntime lines are what the table reads.
.venv/bin/athanor doctor --json > "$out/doctor.json" 2>"$out/doctor.log" || true
step serve .venv/bin/python scripts/bench_serve.py --clients "$clients" --requests "$requests" --out "$out/serve.json"
step daemon .venv/bin/python scripts/bench_daemon.py --reps "$reps" --out "$out/daemon.json"
step export .venv/bin/python scripts/bench_export.py --steps "$export_steps" --out "$out/export"
.venv/bin/python - "$out/train.jsonl" "$train_examples" <<'EOF'
import json, random, sys
path, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(0)
with open(path, "w", encoding="utf-8") as handle:
    for _ in range(count):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        handle.write(json.dumps({"prompt": f"What is {a} plus {b}?", "answer": f"{a} plus {b} is {a + b}."}) + "\n")
EOF
rm -rf "$out/adapter"
started=$SECONDS
step train .venv/bin/athanor train "$out/train.jsonl" --out "$out/adapter" --epochs 1 --precision auto \
    --validation-fraction 0
echo $((SECONDS - started)) > "$out/train_seconds"
.venv/bin/python scripts/bench_gpu_table.py "$out"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "bench_gpu.sh: failed steps: ${failed[*]}" >&2
    exit 1
fi
