#!/usr/bin/env bash
# One device call: run_speed.sh's PARTS under a time limit (so what finished still comes back), then
# everything it wrote packed into one archive under $OUT (the device returns few files), plus the
# cuda ctest log beside it when the tests ran.
# Usage (repo root on the GPU host, .devdeps carried): experiments/perf/device_call.sh PARTS [SECONDS]
set -uo pipefail
parts=${1:?parts}
limit=${2:-540}
run=/tmp/speed_run
rm -rf "$run" && mkdir -p "$run"
timeout "$limit" experiments/perf/run_speed.sh "$run" "$parts"
echo "run_speed.sh exit $?"
tar czf "${OUT:?}/speed_run.tgz" -C /tmp speed_run
[[ -f $run/ctest_cuda.log ]] && cp "$run/ctest_cuda.log" "$OUT/"
exit 0
