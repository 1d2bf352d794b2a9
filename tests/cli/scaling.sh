#!/usr/bin/env bash
# `moe scaling`: the printed numbers against values worked by hand (docs/scaling_laws.md), and a
# fit of synthetic runs generated here from Besiroglu et al.'s constants that must recover them.
# Usage: scaling.sh MOE_BINARY BASE_CONFIG
set -u
moe=$1
base=$2
fail() { echo "FAIL: $*"; exit 1; }
expect() {  # expect "ARGS" PATTERN...: the command succeeds and prints every pattern
  local args=$1; shift
  local out
  out=$($moe $args 2>&1) || fail "moe $args exited non-zero: $out"
  for p in "$@"; do grep -qF -- "$p" <<<"$out" || fail "moe $args: no '$p' in:"$'\n'"$out"; done
}
# Approach 3 at Gopher's budget: G = 1.3447, N = 1.3447 (9.6e22)^(14/31) = 3.219e10 (32B).
expect "scaling optimal --flops 5.76e23" "G = 1.3447" "params N:        3.219e+10" "tokens D:        2.982e+12"
# 20 tokens per parameter at 1.2e20 FLOPs: N = sqrt(1.2e20 / 120) = 1e9, D = 2e10;
# L = 1.69 + 406.4 / 1e9^0.34 + 410.7 / (2e10)^0.28 = 1.69 + 0.35396 + 0.53609 = 2.5800.
expect "scaling optimal --flops 1.2e20 --tokens-per-param 20" "params N:        1e+09" "tokens D:        2e+10" \
  "predicted loss:  2.5800"
expect "scaling loss --params 1e9 --tokens 2e10" "predicted loss:  2.5800" "compute C:       1.2e+20"
# Kaplan at N = N_c / 1e4, D = D_c / 1e3: (1e4)^0.076 = 2.0137, (1e3)^0.095 = 1.9275, joint 2.1095.
expect "scaling loss --params 8.8e9 --tokens 5.4e10 --law kaplan" "L(N):            2.0137" \
  "L(D):            1.9275" "predicted loss:  2.1095"
# base.toml by hand (defaults: 2 layers, SwiGLU d_ff 512, RMSNorm, as many KV heads as heads,
# tied embeddings): embedding 64 x 32 = 2048; per layer q, k, v, o 4 x 32 x 32 = 4096, two norms
# 64, FFN 3 x 32 x 512 = 49152 -> 53312; final norm 32: 2048 + 2 x 53312 + 32 = 108704.
expect "scaling optimal $base --tokens 1e9" "(dense)" "params:          108704 total, 108704 used per token" \
  "-- compute-optimal at the same C --"
# 4 experts of 256 (top-1) per layer instead of the FFN: router 32 x 4 = 128, experts
# 4 x 3 x 32 x 256 = 98304 -> per layer 4096 + 64 + 128 + 98304 = 102592, total
# 2048 + 2 x 102592 + 32 = 207264; a token uses one expert (24576): 2048 + 2 x 28864 + 32 = 59808.
expect "scaling optimal $base --tokens 1e9 --set moe.num_experts=4 --set moe.top_k=1" "(MoE)" \
  "params:          207264 total, 59808 used per token" "caveat:          Chinchilla laws are fitted on dense models"

runs=$(mktemp --suffix=.csv)
trap 'rm -f "$runs"' EXIT
awk 'BEGIN { print "params,tokens,loss"
  split("1e7 3e7 1e8 3e8 1e9 3e9", ns, " "); split("1e9 3e9 1e10 3e10 1e11", ds, " ")
  for (i = 1; i <= 6; i++) for (j = 1; j <= 5; j++)
    printf "%s,%s,%.17g\n", ns[i], ds[j], 1.8172 + 482.01 / ns[i]^0.3478 + 2085.43 / ds[j]^0.3658 }' > "$runs"
out=$($moe scaling fit "$runs" --flops 1e21 2>&1) || fail "moe scaling fit exited non-zero: $out"
grep -qF "rows:            30" <<<"$out" || fail "fit: not 30 rows: $out"
awk -v want="1.8172 482.01 2085.43 0.3478 0.3658" '/^fit: / {
  gsub(/,/, ""); split(want, w, " "); got[1] = $4; got[2] = $7; got[3] = $10; got[4] = $13; got[5] = $16
  for (k = 1; k <= 5; k++) if ((got[k] - w[k]) / w[k] > 1e-4 || (w[k] - got[k]) / w[k] > 1e-4) bad = 1
  found = 1 }
  END { exit (found && !bad) ? 0 : 1 }' <<<"$out" || fail "fit did not recover the constants: $out"
# The same runs in run_study's results.csv layout, fitted by naming its loss column.
awk -F, 'NR == 1 {print "name,params,active_params,tokens,val_loss,val_ppl"; next}
  {printf "run%d,%s,%s,%s,%s,1\n", NR, $1, $1, $2, $3}' "$runs" > "$runs.study"
out2=$($moe scaling fit "$runs.study" --loss-column val_loss --flops 1e21 2>&1) || fail "fit --loss-column: $out2"
[[ $(grep "^fit: " <<<"$out2") == $(grep "^fit: " <<<"$out") ]] || fail "fit --loss-column differs: $out2"
rm -f "$runs.study"
echo "ok"
