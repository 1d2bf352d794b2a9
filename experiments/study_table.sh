#!/usr/bin/env bash
# The summary table of a study (experiments/run_study.sh): per variant, over its seeds, the final
# validation loss's mean, sample standard deviation (n - 1) and number of seeds, its difference to
# the baseline (the first variant) with its standard error, and the paper's number. The runs of one
# seed share their data order (train.seed), which moves every variant's loss alike, so where the
# variant ran exactly the baseline's seeds (2 or more) the difference is paired: the mean of the
# per-seed differences d_s, standard error sd(d)/sqrt(n); otherwise the Welch standard error
# sqrt(s_v^2/n_v + s_b^2/n_b). The summary.csv column diff_kind says which ("paired" | "welch"). And
# the paper's number (PAPER_CSV: variant,value lines; may be empty). Below the table, with 2 or more
# paper numbers: the Spearman rank correlation of the means with them (ties get their mean rank).
# Usage: experiments/study_table.sh RESULTS_CSV PAPER_CSV SUMMARY_CSV > SUMMARY_MD
# RESULTS_CSV: run_study.sh's results.csv (name,params,active_params,tokens,val_loss,val_ppl,seed).
# Empty cells: a standard deviation from one seed, a standard error where either side has one seed.
set -euo pipefail
results=${1:?results.csv}
paper=${2:?paper.csv}
summary=${3:?summary.csv}
awk -F, -v summary="$summary" '
  { sub(/\r$/, "") }  # CSV files with CRLF line ends (as the csv module of Python writes) read the same
  FILENAME == ARGV[1] { if (NF >= 2) paper_of[$1] = $2; next }
  FNR == 1 {
    for (c = 1; c <= NF; c++) col[$c] = c
    if (!("name" in col) || !("val_loss" in col)) { print "study_table: " FILENAME " has no name or val_loss column" > "/dev/stderr"; exit 2 }
    next
  }
  {
    v = $col["name"]
    if (!(v in n)) { order[++num_variants] = v; params[v] = $col["params"]; active[v] = $col["active_params"]; tokens[v] = $col["tokens"] }
    n[v]++; x[v, n[v]] = $col["val_loss"] + 0
    seed[v, n[v]] = ("seed" in col) ? $col["seed"] : ""
  }
  # Whether v ran exactly the seeds of base (2 or more, each once): then d[1..n] are its paired differences.
  function paired_differences(v, base, d,   j, k, found) {
    if (n[v] != n[base] || n[v] < 2) return 0
    for (j = 1; j <= n[v]; j++) {
      found = 0
      for (k = 1; k <= n[base]; k++) {
        if (seed[v, j] != "" && seed[v, j] == seed[base, k]) { found++; d[j] = x[v, j] - x[base, k] }
      }
      if (found != 1) return 0
    }
    return 1
  }
  function ranks(values, count, out,   i, j, less, equal) {  # rank 1 = smallest, ties averaged
    for (i = 1; i <= count; i++) {
      less = 0; equal = 0
      for (j = 1; j <= count; j++) { less += values[j] < values[i]; equal += values[j] == values[i] }
      out[i] = less + (equal + 1) / 2
    }
  }
  function spearman(count,   i, rx, ry, mx, my, sxy, sxx, syy) {  # Pearson of the ranks of px, py
    ranks(px, count, rx); ranks(py, count, ry)
    for (i = 1; i <= count; i++) { mx += rx[i] / count; my += ry[i] / count }
    for (i = 1; i <= count; i++) { sxy += (rx[i] - mx) * (ry[i] - my); sxx += (rx[i] - mx) ^ 2; syy += (ry[i] - my) ^ 2 }
    return (sxx > 0 && syy > 0) ? sxy / sqrt(sxx * syy) : ""
  }
  function fmt(value, digits) { return value == "" ? "" : sprintf("%." digits "f", value) }
  function cell(value, digits) { return value == "" ? "–" : sprintf("%." digits "f", value) }
  END {
    if (num_variants == 0) { print "study_table: no runs in " ARGV[2] > "/dev/stderr"; exit 2 }
    for (i = 1; i <= num_variants; i++) {
      v = order[i]; sum = 0
      for (j = 1; j <= n[v]; j++) sum += x[v, j]
      mean[v] = sum / n[v]; ss = 0
      for (j = 1; j <= n[v]; j++) ss += (x[v, j] - mean[v]) ^ 2
      var[v] = n[v] > 1 ? ss / (n[v] - 1) : ""
    }
    base = order[1]
    print "variant,num_seeds,val_loss_mean,val_loss_std,diff_vs_" base ",diff_se,diff_kind,paper,params,active_params,tokens" > summary
    print "| variant | seeds | val loss (mean ± std) | vs " base " (± s.e.) | paper | parameters | active per token | tokens |"
    print "|---|---|---|---|---|---|---|---|"
    for (i = 1; i <= num_variants; i++) {
      v = order[i]
      std = var[v] == "" ? "" : sqrt(var[v])
      diff = mean[v] - mean[base]; kind = "welch"
      se = (var[v] == "" || var[base] == "") ? "" : sqrt(var[v] / n[v] + var[base] / n[base])
      split("", d)
      if (i > 1 && paired_differences(v, base, d)) {
        kind = "paired"; dm = 0; ds = 0
        for (j = 1; j <= n[v]; j++) dm += d[j] / n[v]
        for (j = 1; j <= n[v]; j++) ds += (d[j] - dm) ^ 2
        diff = dm; se = sqrt(ds / (n[v] - 1) / n[v]); num_paired++
      }
      if (i == 1) { diff = ""; se = ""; kind = "" }
      p = (v in paper_of) ? paper_of[v] : ""
      if (p != "") { num_paper++; px[num_paper] = mean[v]; py[num_paper] = p + 0 }
      printf "%s,%d,%s,%s,%s,%s,%s,%s,%s,%s,%s\n", v, n[v], fmt(mean[v], 6), fmt(std, 6), fmt(diff, 6), fmt(se, 6), kind,
             p, params[v], active[v], tokens[v] > summary
      printf "| %s | %d | %.4f ± %s | %s | %s | %.2fM | %.2fM | %.2fM |\n", v, n[v], mean[v], cell(std, 4),
             i == 1 ? "baseline" : sprintf("%+.4f ± %s", diff, cell(se, 4)), p == "" ? "–" : p,
             params[v] / 1e6, active[v] / 1e6, tokens[v] / 1e6
    }
    if (num_paired > 0) {
      printf "\nThe differences to %s are paired by seed (the same seeds, hence the same data order): the mean of the per-seed differences and its standard error.\n", base
    }
    if (num_paper >= 2) {
      rho = spearman(num_paper)
      printf "\nSpearman rank correlation of the mean validation losses with the paper'"'"'s numbers (%d variants): %s\n",
             num_paper, rho == "" ? "undefined (all tied)" : sprintf("%.3f", rho)
    }
  }' "$paper" "$results"
