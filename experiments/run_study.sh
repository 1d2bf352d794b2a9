#!/usr/bin/env bash
# Runs one ablation study (experiments/<study>/: base.toml + variants.txt) over one or more seeds,
# resumably and optionally several runs at once, and tabulates the final validation losses.
# Usage: experiments/run_study.sh [--seeds 1,2,3] [--parallel N] [--gpus 0,1] [--fresh] STUDY_DIR OUT_DIR
#   --seeds S,...  every run once per seed (train.seed = S; the data order follows train.seed), in
#                  WORK/runs/NAME/seed_S; without it one run per variant in WORK/runs/NAME (base seed)
#   --parallel N   up to N `moe train` processes at once (a table step waits for all of them);
#                  default 1, or one per GPU of --gpus
#   --gpus 0,1     process slot k sees only GPU gpus[k mod count] (CUDA_VISIBLE_DEVICES)
#   --fresh        delete OUT's earlier runs instead of resuming them
# Re-running on the same OUT resumes: a finished run (WORK/runs/.../study_done) is skipped, an
# interrupted one continues from its latest checkpoint (train.resume = latest), a run made with
# other settings is refused by name (use --fresh or another OUT).
# Output: OUT/results.csv and results.md (one row per run: name, params, active_params, tokens,
#   val_loss, val_ppl, seed), OUT/summary.csv and summary.md (experiments/study_table.sh: per
#   variant the mean, sample standard deviation and number of seeds of the final validation loss,
#   the difference to the baseline (the first run) with its Welch standard error, the paper's
#   number; the Spearman correlation with the paper's numbers), OUT/log.txt (the last lines of
#   every run's log).
# Environment: MOE=build/moe; EXTRA="--set k=v ..." (applied to every run before the variant's
#   own keys, e.g. a smaller model or other data); LAUNCH="mpirun -np 2" (a prefix for moe train);
#   WORK=OUT/work (run directories with their checkpoints, hash tables, full logs);
#   VARIANTS=STUDY_DIR/variants.txt (another list of steps over the same base.toml).
# variants.txt, one step per line, in order (# starts a comment):
#   run NAME KEY=VALUE ...    moe train base.toml --set KEY=VALUE ... into WORK/runs/NAME[/seed_S]
#                             (a word paper=X is the paper's number for the table, not a key;
#                             upcycle_from=RUN [upcycle_mode=copy|fine_grained|partial_reinit]
#                             starts each seed from `moe upcycle` of run RUN's last checkpoint of the
#                             same seed (its first seed's without --seeds), into WORK/upcycled/;
#                             init_from=RUN starts each seed from the weights of run RUN's last
#                             checkpoint of the same seed: train.init_from, a fresh optimizer)
#   table FILE ARGS ...       moe hash-table ARGS --out WORK/tables/FILE
# Substitutions in a run line: {tables} = WORK/tables; {checkpoint:NAME} = run NAME's last checkpoint (its first
# seed's); {section.key} = that key of the resolved config of the last run (e.g. {model.vocab_size}).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
seeds=() parallel="" gpus=() fresh=0
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --seeds) IFS=, read -ra seeds <<< "${2:?--seeds needs a list, e.g. 1,2,3}"; shift 2 ;;
    --parallel) parallel=${2:?--parallel needs a count}; shift 2 ;;
    --gpus) IFS=, read -ra gpus <<< "${2:?--gpus needs a list, e.g. 0,1}"; shift 2 ;;
    --fresh) fresh=1; shift ;;
    *) echo "run_study: unknown option $1 (--seeds, --parallel, --gpus, --fresh)" >&2; exit 2 ;;
  esac
done
for s in "${seeds[@]}"; do
  [[ $s =~ ^[0-9]+$ ]] || { echo "run_study: --seeds: '$s' is not a non-negative integer" >&2; exit 2; }
done
[[ -n $parallel ]] || parallel=$((${#gpus[@]} > 0 ? ${#gpus[@]} : 1))  # one run per GPU by default
[[ $parallel =~ ^[1-9][0-9]*$ ]] || { echo "run_study: --parallel: '$parallel' is not a positive integer" >&2; exit 2; }
for g in "${gpus[@]}"; do
  [[ $g =~ ^[0-9]+$ ]] || { echo "run_study: --gpus: '$g' is not a GPU index" >&2; exit 2; }
done
study=${1:?study dir (experiments/<study>)}
out=${2:?out dir}
moe=${MOE:-build/moe}
read -d '' -ra extra <<< "${EXTRA:-}" || true  # words over any number of lines
read -d '' -ra launch <<< "${LAUNCH:-}" || true
variants=${VARIANTS:-$study/variants.txt}
[[ -f $study/base.toml ]] || { echo "run_study: $study has no base.toml" >&2; exit 2; }
[[ -f $variants ]] || { echo "run_study: no variants file $variants" >&2; exit 2; }
work=${WORK:-$out/work}
((fresh)) && rm -rf "$work/runs" "$work/tables" "$work/status"
mkdir -p "$out" "$work/runs" "$work/tables" "$work/logs" "$work/status"
((${#seeds[@]})) || seeds=("")  # one run per variant at base.toml's seed
last_run=""
failed=0
slot_pids=()

toml_get() {  # toml_get FILE SECTION KEY: the value, quotes stripped
  awk -v want="[$2]" -v key="$3" '/^\[/ {in_section = ($0 == want); next}
    in_section && $1 == key {sub(/^[^=]*= */, ""); gsub(/"/, ""); print; exit}' "$1"
}

run_id() { [[ -z $2 ]] && echo "$1" || echo "$1/seed_$2"; }        # run_id NAME SEED: WORK/runs/<id>
log_name() { [[ -z $2 ]] && echo "$1" || echo "$1.seed_$2"; }      # WORK/logs/<log_name>.log

expand() {  # the placeholders of one word
  local word=$1 name key
  word=${word//\{tables\}/$work/tables}
  while [[ $word =~ \{checkpoint:([A-Za-z0-9_]+)\} ]]; do
    name=${BASH_REMATCH[1]}
    key=$(last_checkpoint "$name" "${seeds[0]}") || return 1
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

wait_all() {  # a barrier: every running `moe train` has ended
  wait
  slot_pids=()
}

free_slot() {  # sets slot to a free process slot, waiting for one when all N are busy
  local k
  while true; do
    for ((k = 0; k < parallel; k++)); do
      if [[ -z ${slot_pids[k]:-} ]] || ! kill -0 "${slot_pids[k]}" 2> /dev/null; then slot=$k; return; fi
    done
    wait -n 2> /dev/null || true
  done
}

train_one() {  # train_one NAME SEED ARGS...: one run, resumed or skipped as its directory says
  local name=$1 seed=$2 id dir log status sig src mode=()
  shift 2
  id=$(run_id "$name" "$seed") dir=$work/runs/$(run_id "$name" "$seed")
  log=$work/logs/$(log_name "$name" "$seed").log
  status=$work/status/$(log_name "$name" "$seed")
  sig=$(printf '%s\n' "${extra[@]}" "$@" "seed=$seed")
  [[ -n ${up_from:-} ]] && sig+=$'\n'"upcycle_from=$up_from upcycle_mode=$up_mode"
  [[ -n ${init_from:-} ]] && sig+=$'\n'"init_from=$init_from"
  if [[ -f $dir/study_args ]] && [[ $(< "$dir/study_args") != "$sig" ]]; then
    echo "run_study: run $id in $work/runs was made with other settings (--fresh or another OUT to redo it)" >&2
    echo failed > "$status"; return 1
  fi
  if [[ -f $dir/study_done ]]; then
    echo "[$(date +%T)] skip $id (finished)" >&2
    echo ok > "$status"; return 0
  fi
  local seed_arg=()
  [[ -n $seed ]] && seed_arg=(--set "train.seed=$seed")
  if ls -d "$dir/checkpoints/step_"* > /dev/null 2>&1; then
    echo "[$(date +%T)] resume $id" >&2
    mode=(--set train.resume=latest)
  elif [[ -n ${up_from:-} ]]; then
    upcycle_one "$id" "$seed" "$@" "${seed_arg[@]}" || { echo failed > "$status"; return 1; }
    mode=(--set train.overwrite=true --set train.resume="$work/upcycled/$id")
  elif [[ -n ${init_from:-} ]]; then
    src=$(last_checkpoint "$init_from" "$seed") || { echo failed > "$status"; return 1; }
    echo "[$(date +%T)] run $id from the weights of $src" >&2
    mode=(--set train.overwrite=true --set train.init_from="$src")
  else
    echo "[$(date +%T)] run $id" >&2
    mode=(--set train.overwrite=true)
  fi
  mkdir -p "$dir"
  printf '%s\n' "$sig" > "$dir/study_args"
  if ! "${launch[@]}" "$moe" train "$study/base.toml" "${extra[@]}" "$@" "${seed_arg[@]}" \
      --set train.run_dir="$dir" "${mode[@]}" > "$log" 2>&1; then
    echo "run_study: run $id failed: $(grep -v '^\s*$' "$log" | tail -1)" >&2
    echo failed > "$status"; return 1
  fi
  touch "$dir/study_done"
  echo ok > "$status"
}

last_checkpoint() {  # last_checkpoint RUN SEED: the newest checkpoint of that run's seed
  local dir
  dir=$(ls -d "$work/runs/$(run_id "$1" "$2")/checkpoints/step_"* 2> /dev/null | sort -V | tail -1)
  [[ -n $dir ]] || { echo "run_study: run $(run_id "$1" "$2") has no checkpoint" >&2; return 1; }
  printf '%s' "$dir"
}

upcycle_one() {  # upcycle_one ID SEED ARGS...: WORK/upcycled/ID from run $up_from's last checkpoint
  local id=$1 seed=$2 src log
  shift 2
  src=$(last_checkpoint "$up_from" "$seed") || return 1
  log=$work/logs/upcycle_${id//\//.}.log
  echo "[$(date +%T)] upcycle $id from $src ($up_mode)" >&2
  rm -rf "$work/upcycled/$id"
  mkdir -p "$(dirname "$work/upcycled/$id")"
  "$moe" upcycle "$study/base.toml" "${extra[@]}" "$@" --from "$src" --mode "$up_mode" \
      --out "$work/upcycled/$id" > "$log" 2>&1 \
    || { echo "run_study: upcycle for $id failed: $(grep -v '^\s*$' "$log" | tail -1)" >&2; return 1; }
}

run_variant() {  # run_variant NAME WORDS...: every seed of one variant, each in a free slot
  local name=$1 word args=() seed slot up_from="" up_mode=copy init_from=""
  shift
  for word in "$@"; do
    [[ $word == paper=* ]] && continue
    if [[ $word == upcycle_from=* ]]; then up_from=${word#upcycle_from=}; wait_all; continue; fi
    [[ $word == upcycle_mode=* ]] && { up_mode=${word#upcycle_mode=}; continue; }
    if [[ $word == init_from=* ]]; then init_from=${word#init_from=}; wait_all; continue; fi
    [[ $word == *\{*\}* && $word != *\{tables\}* ]] && wait_all  # a substitution reads finished runs
    args+=(--set "$(expand "$word")") || return 1
  done
  for seed in "${seeds[@]}"; do
    free_slot
    if ((${#gpus[@]})); then
      CUDA_VISIBLE_DEVICES=${gpus[slot % ${#gpus[@]}]} train_one "$name" "$seed" "${args[@]}" &
    else
      train_one "$name" "$seed" "${args[@]}" &
    fi
    slot_pids[slot]=$!
  done
  last_run=$(run_id "$name" "${seeds[0]}")
}

build_table() {  # build_table FILE ARGS...
  local file=$1 word args=()
  shift
  wait_all
  for word in "$@"; do args+=("$(expand "$word")") || return 1; done
  if [[ -s $work/tables/$file ]]; then echo "[$(date +%T)] skip table $file (built)" >&2; return 0; fi
  echo "[$(date +%T)] table $file" >&2
  "$moe" hash-table "${args[@]}" --out "$work/tables/$file" > "$work/logs/table_$file.log" 2>&1 \
    || { echo "run_study: table $file failed: $(tail -1 "$work/logs/table_$file.log")" >&2; rm -f "$work/tables/$file"; return 1; }
}

result_row() {  # result_row NAME SEED: the run's results.csv row from its log and metrics.jsonl
  local name=$1 seed=$2 id dir log header metrics train_steps
  id=$(run_id "$name" "$seed") dir=$work/runs/$(run_id "$name" "$seed")
  log=$work/logs/$(log_name "$name" "$seed").log
  [[ $(cat "$work/status/$(log_name "$name" "$seed")" 2> /dev/null) == ok ]] || return 1
  { echo "== $id"; grep -E "^moe-engine:|^eval step" "$log" | tail -2; } >> "$out/log.txt"
  # "moe-engine: 9511168 parameters (4202752 active per token), ..., 2048 tokens per step"
  header=$(grep -m1 "^moe-engine: [0-9]* parameters" "$log")
  [[ -n $header ]] || { echo "run_study: run $id: no 'moe-engine: N parameters' line in its log" >&2; return 1; }
  metrics=$(grep '"val_loss"' "$dir/metrics.jsonl" | tail -1)
  [[ -n $metrics ]] || { echo "run_study: run $id wrote no validation loss (set train.eval_every)" >&2; return 1; }
  train_steps=$(toml_get "$dir/config.toml" train steps)
  printf '%s,%s,%s,%s,%s,%s,%s\n' "$name" "$(sed -E 's/^moe-engine: ([0-9]+) parameters.*/\1/' <<< "$header")" \
    "$(sed -E 's/.*\(([0-9]+) active per token\).*/\1/' <<< "$header")" \
    "$(( $(sed -E 's/.* ([0-9]+) tokens per step.*/\1/' <<< "$header") * train_steps ))" \
    "$(sed -E 's/.*"val_loss":([-0-9.eE+]+).*/\1/' <<< "$metrics")" \
    "$(sed -E 's/.*"val_ppl":([-0-9.eE+]+).*/\1/' <<< "$metrics")" "$seed" >> "$out/results.csv"
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

rm -f "$work/status/"*
for step in "${steps[@]}"; do
  read -ra words <<< "$step"
  case ${words[0]} in
    run) run_variant "${words[@]:1}" || failed=$((failed + 1)) ;;
    table) build_table "${words[@]:1}" || failed=$((failed + 1)) ;;
  esac
done
wait_all

# The tables: one row per finished run, then the per-variant summary against the first run.
: > "$out/log.txt"
echo "name,params,active_params,tokens,val_loss,val_ppl,seed" > "$out/results.csv"
: > "$out/paper.csv"
for step in "${steps[@]}"; do
  read -ra words <<< "$step"
  [[ ${words[0]} == run ]] || continue
  for word in "${words[@]:2}"; do [[ $word == paper=* ]] && echo "${words[1]},${word#paper=}" >> "$out/paper.csv"; done
  for seed in "${seeds[@]}"; do result_row "${words[1]}" "$seed" || failed=$((failed + 1)); done
done
awk -F, 'NR == 1 {next}
  NR == 2 {base = $5; print "| variant | seed | parameters | active per token | tokens | val loss | val ppl | vs " $1 " |";
           print "|---|---|---|---|---|---|---|---|"}
  {printf "| %s | %s | %.2fM | %.2fM | %.2fM | %.4f | %.2f | %+.4f |\n", $1, $7, $2 / 1e6, $3 / 1e6, $4 / 1e6, $5, $6, $5 - base}' \
  "$out/results.csv" > "$out/results.md"
"$here/study_table.sh" "$out/results.csv" "$out/paper.csv" "$out/summary.csv" > "$out/summary.md"
cat "$out/summary.md"
((failed == 0)) || { echo "run_study: $failed step(s) failed (logs in $work/logs)" >&2; exit 1; }
