#!/usr/bin/env bash
# Writes configs/plans/NAME.txt, the `moe plan` output of configs/NAME.toml on the ranks of its
# "# plan-world: N" line; with --check, compares instead and fails on a config that does not validate or
# whose plan differs from the committed file (the CTest cli_reference_configs).
# Usage: configs/make_plans.sh [--check] [MOE_BINARY]   (default build/moe; run from anywhere)
set -u
check=0
if [[ ${1:-} == --check ]]; then check=1; shift; fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
moe=${1:-$root/build/moe}
[[ $moe == /* ]] || moe=$PWD/$moe
[[ -x $moe ]] || { echo "make_plans.sh: no moe binary at $moe (build it, or pass its path)" >&2; exit 1; }
cd "$root" || exit 1
out=$(mktemp)
trap 'rm -f "$out"' EXIT
failed=0
shopt -s nullglob
configs=(configs/*.toml)
(( ${#configs[@]} > 0 )) || { echo "make_plans.sh: no configs/*.toml" >&2; exit 1; }
for config in "${configs[@]}"; do
  name=$(basename "$config" .toml)
  plan=configs/plans/$name.txt
  world=$(sed -n 's/^# plan-world: *\([0-9][0-9]*\) *$/\1/p' "$config")
  if [[ -z $world ]]; then
    echo "FAIL: $config has no '# plan-world: N' line (the ranks of its suggested layout)"; failed=1; continue
  fi
  # Relative path: the plan's first line names the config, so the output is the same on every checkout.
  if ! "$moe" plan "$config" --world "$world" >"$out" 2>&1; then
    echo "FAIL: moe plan $config --world $world exited non-zero:"; cat "$out"; failed=1; continue
  fi
  if (( check )); then
    if [[ ! -f $plan ]]; then
      echo "FAIL: $plan is missing (run configs/make_plans.sh)"; failed=1
    elif ! diff -u "$plan" "$out" >/dev/null; then
      echo "FAIL: moe plan $config --world $world differs from $plan (rerun configs/make_plans.sh and commit):"
      diff -u "$plan" "$out" | head -40; failed=1
    fi
  else
    mkdir -p configs/plans && cp "$out" "$plan" && echo "wrote $plan"
  fi
done
# A plan whose config is gone.
for plan in configs/plans/*.txt; do
  name=$(basename "$plan" .txt)
  [[ -f configs/$name.toml ]] || { echo "FAIL: $plan has no configs/$name.toml"; failed=1; }
done
(( check && !failed )) && echo "configs: ${#configs[@]} configs validate and match their plans"
exit $failed
