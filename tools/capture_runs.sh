#!/bin/bash
# Issue 13's capture runs on one GPU host, grouped to fit 10-minute device commands.
#
#   bash tools/capture_runs.sh all SRC N OUT     # build DeepEP (three ways, in parallel), then every suite on N GPUs
#   bash tools/capture_runs.sh build SRC OUT     # the builds alone; OUT/built.tgz holds the built trees
#   bash tools/capture_runs.sh run BUILT N OUT   # the suites alone, from built trees (tar -xzf built.tgz -C BUILT)
#
# N = 1 is the dry run (--quick: NCCL path with world size 1, DeepEP Buffer construction and layout).
# SRC holds deepep_v1/ (DeepEP 567632dd, the last V1 tree) and deepep_v2/ (DeepEP HEAD with
# third-party/fmt/include), each with a DEEPEP_COMMIT file: see tools/capture_deepep.py's docstring.
# The lent machines start bare, so `all` is the one-call form (builds get BUILD_LIMIT_S, default 240 s).
# When the builds need longer: `build` in one call, then `run /tmp/deepep_build N OUT` in the next call
# while the machine is still warm (it keeps /tmp for ~30 s after a call); if it went back, carry
# OUT/built.tgz (if it fits the 16 MiB a returned file may have) and run from its unpacked trees.
# A run leaves OUT/captures_ep<N>.tgz (per suite: results.jsonl, provenance.json, routing dumps,
# compressed profiler traces, validation_rows.toml, the log) and OUT/summary.txt. NVLink multicast off.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
HERE=$(cd "$(dirname "$0")" && pwd)
CMD=$1; SRC=$(cd "$2" && pwd); W=/tmp/deepep_build
T0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - T0 )) s"; }

build() {  # OUT LIMIT_S
  local OUT=$1 LIMIT=$2; mkdir -p "$OUT"; rm -rf $W; mkdir -p $W
  cp -r "$SRC/deepep_v1" $W/v1-intranode; cp -r "$SRC/deepep_v1" $W/v1-full; cp -r "$SRC/deepep_v2" $W/v2
  { date -u; nvidia-smi; nvcc --version; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())"; python3 -m pip show nvidia-nvshmem-cu13 nvidia-nccl-cu13 2>&1 | grep -i '^name\|^version'; nproc; } > "$OUT/build_env.log" 2>&1
  for v in v1-intranode v1-full v2; do
    ( timeout $LIMIT python3 "$HERE/capture_deepep.py" build --src $W/$v --variant $v --jobs 6 > "$OUT/build_$v.log" 2>&1
      echo "exit $? at $(elapsed)" >> "$OUT/build_$v.log" ) &
  done
  wait
  for v in v1-intranode v1-full v2; do echo "== $v"; tail -n 5 "$OUT/build_$v.log" | cut -c1-300; done
  find $W -name '*.so' -exec ls -la {} +; echo "build done after $(elapsed)"
}

suites() {  # BUILT N OUT
  local B=$1 N=$2 OUT=$3; mkdir -p "$OUT"; R=/tmp/captures_ep$N; rm -rf $R; mkdir -p $R
  local Q=""; [ "$N" = 1 ] && Q="--quick --iters 3"
  export EP_SUPPRESS_NCCL_CHECK=${EP_SUPPRESS_NCCL_CHECK:-0}
  run nccl_moe 150 python3 "$HERE/capture_nccl_moe.py" --world-size "$N" --out $R/nccl_moe $Q
  run v1_normal 200 python3 "$HERE/capture_deepep.py" run --src "$B/v1-intranode" --suite v1-normal --world-size "$N" --out $R/v1_normal $Q
  run v1_ll 90 python3 "$HERE/capture_deepep.py" run --src "$B/v1-full" --suite v1-ll --world-size "$N" --out $R/v1_ll $Q
  run v2 90 python3 "$HERE/capture_deepep.py" run --src "$B/v2" --suite v2 --world-size "$N" --out $R/v2 $Q
  { for f in $R/*.log; do echo "== $f"; tail -n 8 "$f" | cut -c1-300; done
    for f in $R/*/results.jsonl; do echo "== $f: $(wc -l < "$f") lines, $(grep -c '"error"' "$f") errors"; done
    echo "total $(elapsed)"; } | tee "$OUT/summary.txt"
  cp "$OUT"/build_*.log $R/ 2>/dev/null; tar -czf "$OUT/captures_ep$N.tgz" -C /tmp "captures_ep$N"
}

run() {  # name, timeout, command...
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$@" > "$R/$name.log" 2>&1; echo "exit $? at $(elapsed)" >> "$R/$name.log"
}

case "$CMD" in
  all) build "$4" "${BUILD_LIMIT_S:-240}"; suites $W "$3" "$4" ;;
  build) build "$3" "${BUILD_LIMIT_S:-540}"; tar -czf "$3/built.tgz" --exclude=build -C $W . ;;
  run) suites "$SRC" "$3" "$4" ;;
  *) echo "usage: $0 all SRC N OUT | build SRC OUT | run BUILT N OUT" >&2; exit 2 ;;
esac
