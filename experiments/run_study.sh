#!/usr/bin/env bash
# Runs one ablation study (experiments/<study>/: base.toml + variants.txt) and tabulates the final
# validation loss of every variant into OUT/results.csv and OUT/results.md (OUT/log.txt: the last
# lines of every run's log).
# Usage: experiments/run_study.sh STUDY_DIR OUT_DIR
# Environment: MOE=build/moe; EXTRA="--set k=v ..." (applied to every run before the variant's
#   own keys, e.g. a smaller model or other data); LAUNCH="mpirun -np 2" (a prefix for moe train);
#   WORK=OUT/work (run directories with their checkpoints, hash tables, full logs);
#   VARIANTS=STUDY_DIR/variants.txt (another list of steps over the same base.toml).
# variants.txt, one step per line, in order (# starts a comment):
#   run NAME KEY=VALUE ...    moe train base.toml --set KEY=VALUE ... into WORK/runs/NAME
#   table FILE ARGS ...       moe hash-table ARGS --out WORK/tables/FILE
# Placeholders: {tables} = WORK/tables; {checkpoint:NAME} = run NAME's last checkpoint;
# {section.key} = that key of the resolved config of the last run (e.g. {model.vocab_size}).
set -uo pipefail
study=${1:?study dir (experiments/<study>)}
out=${2:?out dir}
moe=${MOE:-build/moe}
read -d '' -ra extra <<< "${EXTRA:-}" || true  # words over any number of lines
read -d '' -ra launch <<< "${LAUNCH:-}" || true
variants=${VARIANTS:-$study/variants.txt}
[[ -f $study/base.toml ]] || { echo "run_study: $study has no base.toml" >&2; exit 2; }
[[ -f $variants ]] || { echo "run_study: no variants file $variants" >&2; exit 2; }
work=${WORK:-$out/work}
mkdir -p "$out" "$work/runs" "$work/tables" "$work/logs"
: > "$out/log.txt"
echo "name,params,active_params,tokens,val_loss,val_ppl" > "$out/results.csv"
last_run=""
failed=0

toml_get() {  # toml_get FILE SECTION KEY: the value, quotes stripped
  awk -v want="[$2]" -v key="$3" '/^\[/ {in_section = ($0 == want); next}
    in_section && $1 == key {sub(/^[^=]*= */, ""); gsub(/"/, ""); print; exit}' "$1"
}

expand() {  # the placeholders of one word
  local word=$1 name key
  word=${word//\{tables\}/$work/tables}
  while [[ $word =~ \{checkpoint:([A-Za-z0-9_]+)\} ]]; do
    name=${BASH_REMATCH[1]}
    key=$(ls -d "$work/runs/$name/checkpoints/step_"* 2> /dev/null | sort -V | tail -1)
    [[ -n $key ]] || { echo "run_study: {checkpoint:$name}: run $name has no checkpoint" >&2; return 1; }
    word=${word//\{checkpoint:$name\}/$key}
  done
  while [[ $word =~ \{([a-z_0-9]+)\.([a-z_0-9]+)\} ]]; do
    [[ -n $last_run ]] || { echo "run_study: {${BASH_REMATCH[1]}.${BASH_REMATCH[2]}} before any run" >&2; return 1; }
    key=$(toml_get "$work/runs/$last_run/config.toml" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}")
    [[ -n $key ]] || { echo "run_study: no key ${BASH_REMATCH[1]}.${BASH_REMATCH[2]} in $last_run's config" >&2; return 1; }
    word=${word//\{${BASH_REMATCH[1]}.${BASH_REMATCH[2]}\}/$key}
  done
  printf '%s' "$word"
}

run_variant() {  # run_variant NAME KEY=VALUE...: train, then one results row
  local name=$1 kv args=() header metrics train_steps
  shift
  for kv in "$@"; do args+=(--set "$(expand "$kv")") || return 1; done
  echo "[$(date +%T)] run $name" >&2
  rm -rf "$work/runs/$name"
  if ! "${launch[@]}" "$moe" train "$study/base.toml" "${extra[@]}" "${args[@]}" \
      --set train.run_dir="$work/runs/$name" > "$work/logs/$name.log" 2>&1; then
    echo "run_study: run $name failed: $(grep -v '^\s*$' "$work/logs/$name.log" | tail -1)" | tee -a "$out/log.txt" >&2
    return 1
  fi
  { echo "== $name"; grep -E "^moe-engine:|^eval step" "$work/logs/$name.log" | tail -2; } >> "$out/log.txt"
  # "moe-engine: 9511168 parameters (4202752 active per token), ..., 2048 tokens per step"
  header=$(grep -m1 "^moe-engine: [0-9]* parameters" "$work/logs/$name.log")
  [[ -n $header ]] || { echo "run_study: run $name: no 'moe-engine: N parameters' line in its log" >&2; return 1; }
  metrics=$(grep '"val_loss"' "$work/runs/$name/metrics.jsonl" | tail -1)
  [[ -n $metrics ]] || { echo "run_study: run $name wrote no validation loss (set train.eval_every)" >&2; return 1; }
  last_run=$name
  train_steps=$(toml_get "$work/runs/$name/config.toml" train steps)
  printf '%s,%s,%s,%s,%s,%s\n' "$name" "$(sed -E 's/^moe-engine: ([0-9]+) parameters.*/\1/' <<< "$header")" \
    "$(sed -E 's/.*\(([0-9]+) active per token\).*/\1/' <<< "$header")" \
    "$(( $(sed -E 's/.* ([0-9]+) tokens per step.*/\1/' <<< "$header") * train_steps ))" \
    "$(sed -E 's/.*"val_loss":([-0-9.eE+]+).*/\1/' <<< "$metrics")" \
    "$(sed -E 's/.*"val_ppl":([-0-9.eE+]+).*/\1/' <<< "$metrics")" >> "$out/results.csv"
}

build_table() {  # build_table FILE ARGS...
  local file=$1 word args=()
  shift
  for word in "$@"; do args+=("$(expand "$word")") || return 1; done
  echo "[$(date +%T)] table $file" >&2
  "$moe" hash-table "${args[@]}" --out "$work/tables/$file" > "$work/logs/table_$file.log" 2>&1 \
    || { echo "run_study: table $file failed: $(tail -1 "$work/logs/table_$file.log")" >&2; return 1; }
}

# The steps, checked before anything runs (a last line without a newline counts too).
steps=()
line_no=0
while read -r verb rest || [[ -n $verb ]]; do
  line_no=$((line_no + 1))
  [[ -z $verb || $verb == \#* ]] && continue
  [[ $verb == run || $verb == table ]] \
    || { echo "run_study: $variants:$line_no: unknown step '$verb' (run or table)" >&2; exit 2; }
  [[ -n $rest ]] || { echo "run_study: $variants:$line_no: '$verb' needs a name" >&2; exit 2; }
  steps+=("$verb $rest")
done < "$variants"

for step in "${steps[@]}"; do
  read -ra words <<< "$step"
  case ${words[0]} in
    run) run_variant "${words[@]:1}" || failed=$((failed + 1)) ;;
    table) build_table "${words[@]:1}" || failed=$((failed + 1)) ;;
  esac
done

# The table: every variant against the first run (the study's baseline).
awk -F, 'NR == 1 {next}
  NR == 2 {base = $5; print "| variant | parameters | active per token | tokens | val loss | val ppl | vs " $1 " |";
           print "|---|---|---|---|---|---|---|"}
  {printf "| %s | %.2fM | %.2fM | %.2fM | %.4f | %.2f | %+.4f |\n", $1, $2 / 1e6, $3 / 1e6, $4 / 1e6, $5, $6, $5 - base}' \
  "$out/results.csv" > "$out/results.md"
cat "$out/results.md"
((failed == 0)) || { echo "run_study: $failed step(s) failed (logs in $work/logs)" >&2; exit 1; }
