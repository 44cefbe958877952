#!/usr/bin/env bash
# One device call for what issue 12 left open (docs/benchmarks.md, "Prepared for the next GPU call"):
# V in P's register order checked and timed alone, then inside the 14B forward with joules per forward,
# then joules per attention call after different work. Every step has its own time limit, so one
# that hangs costs its own rows; logs and JSON go to $OUT (or ./out). About 6 minutes on an H200.
#
#   bash bench/issue12_next.sh            # on the device, after installing the carried wheels
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
step() {  # step SECONDS NAME COMMAND...: run with a limit, keep the log, print its tail
    local limit=$1 name=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "rc=$?" | tee -a "$OUT/$name.log"
    grep -v -i warning "$OUT/$name.log" | tail -n 14
}
step 200 gpu-tests python3 -m pytest -q tests/gpu/test_attention_gpu.py -k "gluon or fused_block_with_8bit"
step 120 gluon python3 bench/bench_attention_gluon.py --out "$OUT"
step 200 forward python3 bench/bench_forward.py --models 14B --no-720p --rounds 2 --sage8-v-perm \
    --json "$OUT/forward.json"
step 60 context python3 bench/bench_attention_context.py --out "$OUT"
