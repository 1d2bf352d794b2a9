#!/usr/bin/env bash
# `moe scaling isoflop` on synthetic runs of Hoffmann et al.'s law (4 budgets x 9 sizes a factor 2
# apart): approach 2 recovers N_opt ∝ C^(β/(α+β)) = C^0.4516, approach 3 the constants, and
# --json feeds experiments/report.py --scaling (its three PNGs; skipped without matplotlib).
# Usage: scaling_isoflop.sh MOE_BINARY SOURCE_DIR
set -u
moe=$1
src=$2
fail() { echo "FAIL: $*"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# N_opt = G (C/6)^(14/31) with G = 1.3447 (docs/scaling_laws.md); the sizes are centred on 1.3 N_opt.
awk 'BEGIN { print "params,tokens,loss"
  split("1e18 1e19 1e20 1e21", cs, " ")
  for (i = 1; i <= 4; i++) for (k = -4; k <= 4; k++) {
    n = 1.3 * 1.3447 * (cs[i] / 6) ^ (0.28 / 0.62) * 2 ^ k; d = cs[i] / (6 * n)
    printf "%.17g,%.17g,%.17g\n", n, d, 1.69 + 406.4 / n ^ 0.34 + 410.7 / d ^ 0.28 } }' > "$work/runs.csv"
out=$($moe scaling isoflop "$work/runs.csv" --json "$work/fit.json" 2>&1) || fail "isoflop exited non-zero: $out"
grep -qF "runs:            36" <<<"$out" || fail "not 36 runs: $out"
[[ $(grep -c "^budget: .*9 runs, N_opt" <<<"$out") -eq 4 ]] || fail "not 4 budgets with an optimum: $out"
grep -qE "^approach 2: +N_opt = [0-9.e+]+ C\^0\.451[5-7], D_opt = [0-9.e+-]+ C\^0\.548[3-5]" <<<"$out" \
  || fail "approach 2 did not recover the exponent 0.4516: $out"
grep -qE "^approach 1: +N_opt = [0-9.e+]+ C\^0\.4[0-9]" <<<"$out" || fail "approach 1: $out"
awk '/^approach 3: / { gsub(/,/, ""); if ($14 > 0.336 && $14 < 0.344 && $17 > 0.277 && $17 < 0.283) ok = 1 }
  END { exit ok ? 0 : 1 }' <<<"$out" || fail "approach 3 did not recover alpha 0.34, beta 0.28: $out"
[[ -s $work/fit.json ]] || fail "no --json file"

# experiments/isoflop's sweep: every variant is a valid config whose 6 N D is its budget (within 1%).
while read -r verb name rest; do
  [[ $verb == run ]] || continue
  read -ra keys <<< "$rest"
  sets=() steps=""
  for kv in "${keys[@]}"; do sets+=(--set "$kv"); [[ $kv == train.steps=* ]] && steps=${kv#train.steps=}; done
  out=$($moe scaling optimal "$src/experiments/isoflop/base.toml" "${sets[@]}" --tokens $((steps * 4096)) 2>&1) \
    || fail "isoflop variant $name: $out"
  budget=${name#c}; budget=${budget%%_*}
  awk -v want="${budget/e/e+}" '/^compute C:/ && !done { done = 1; if ($3 / want < 0.99 || $3 / want > 1.01) exit 1 }' <<<"$out" \
    || fail "isoflop variant $name: C is not $budget: $out"
done < "$src/experiments/isoflop/variants.txt"

python=""
for p in ${PYTHON:-} python3 /usr/bin/python3; do
  if "$p" -c "import matplotlib" 2> /dev/null; then python=$p; break; fi
done
if [[ -z $python ]]; then echo "scaling_isoflop: no python3 with matplotlib (scripts/setup.sh installs it): plots skipped"; exit 77; fi
"$python" "$src/experiments/report.py" --scaling "$work/fit.json" --out "$work/plots" > "$work/report.out" 2>&1 \
  || { cat "$work/report.out"; fail "report.py --scaling failed"; }
for png in isoflop optimal_params loss_fit; do
  f=$work/plots/$png.png
  [[ -s $f ]] || fail "no $png.png"
  [[ $(head -c 8 "$f" | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]] || fail "$png.png is not a PNG"
done
echo "ok"
