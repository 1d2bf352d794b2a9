#!/usr/bin/env bash
# Runs a command that must fail: passes when it exits non-zero, prints exactly one line on
# stderr+stdout (any number of lines with EXPECT_ANY_LINES=1) that matches the expected pattern, and does not crash (no signal exit).
# With EXPECT_CODE=N the exit code must be N (2 for usage errors).
# Usage: expect_error.sh PATTERN COMMAND [ARGS...]
set -u
pattern=$1
shift
output=$("$@" 2>&1)
code=$?
if [[ $code -eq 0 ]]; then
  echo "expected a failure, got exit 0; output:"; echo "$output"; exit 1
fi
if [[ $code -gt 128 ]]; then
  echo "crashed with signal $((code - 128)); output:"; echo "$output"; exit 1
fi
if [[ -n "${EXPECT_CODE:-}" && $code -ne $EXPECT_CODE ]]; then
  echo "expected exit $EXPECT_CODE, got $code; output:"; echo "$output"; exit 1
fi
if ! grep -qE -- "$pattern" <<<"$output"; then
  echo "output does not match '$pattern':"; echo "$output"; exit 1
fi
lines=$(grep -c . <<<"$output")
# Under mpirun the launcher adds its own abort banner: only single-process runs must be one line.
if [[ -z "${EXPECT_ANY_LINES:-}" && $lines -ne 1 ]]; then
  echo "expected one error line, got $lines:"; echo "$output"; exit 1
fi
echo "ok (exit $code): $output"
