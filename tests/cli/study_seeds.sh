#!/usr/bin/env bash
# experiments/run_study.sh over seeds: a tiny study (2 variants x 2 seeds, 4 steps each) run two at
# a time on "GPUs" 0,1; its summary's numbers equal those computed here from the runs' metrics.jsonl;
# a second call skips every finished run, an interrupted run resumes from its latest checkpoint, a
# run made with other settings is refused by name, bad options are refused.
# Then experiments/report.py on the study (when a python3 with matplotlib is found; else skipped).
# Usage: study_seeds.sh MOE_BINARY SOURCE_DIR
set -euo pipefail
moe=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
"$(dirname "$0")/tiny_corpus.sh" "$work/corpus.txt" 400
"$moe" tokenize --input "$work/corpus.txt" --out "$work/data" --vocab-size 300 > /dev/null
mkdir -p "$work/study"
cp "$src/experiments/hash_layers/base.toml" "$work/study/"
printf 'run dense moe.num_experts=0 paper=3.50\nrun hash moe.router=hash moe.hash_kind=random paper=3.40\n' \
  > "$work/study/variants.txt"
# The launcher records the GPU each process was given.
printf '#!/usr/bin/env bash\necho "${CUDA_VISIBLE_DEVICES:-none}" >> %s/gpus.txt\nexec "$@"\n' "$work" > "$work/launch.sh"
chmod +x "$work/launch.sh"
export MOE=$moe LAUNCH=$work/launch.sh
export EXTRA="--set model.vocab_size=320 --set model.d_model=32 --set model.num_heads=2 --set model.num_kv_heads=2
  --set model.seq_len=16 --set model.d_ff=64 --set train.micro_batch_size=4 --set train.steps=4 --set train.eval_every=4
  --set train.log_every=1 --set train.save_every=2 --set train.eval_batches=2 --set train.device=cpu
  --set data.train_path=$work/data/train.tok --set data.val_path=$work/data/val.tok --set data.tokenizer=$work/data/tokenizer.model"
study() { "$src/experiments/run_study.sh" "$@" "$work/study" "$work/out" > "$work/study.out" 2>&1; }
study --seeds 1,2 --parallel 2 --gpus 0,1 || { cat "$work/study.out"; fail "the study failed"; }

[[ $(sort -u "$work/gpus.txt" | tr '\n' ' ') == "0 1 " ]] || fail "GPUs given: $(sort "$work/gpus.txt" | tr '\n' ' ')"
grep -q '^seed = 2$' "$work/out/work/runs/hash/seed_2/config.toml" || fail "seed_2 did not train with seed 2"
[[ $(grep -c '^dense,.*,[12]$' "$work/out/results.csv") -eq 2 ]] || fail "results.csv: $(cat "$work/out/results.csv")"
# The summary against the metrics: mean, sample std, seeds, the paired difference and its standard error,
# the Spearman correlation with the paper's numbers.
check_summary() {
  python3 - "$work/out" <<'EOF' || fail "the summary does not match the runs' metrics"
import csv, json, math, statistics, sys
out = sys.argv[1]
def final(v, s):
    rows = [json.loads(l) for l in open(f"{out}/work/runs/{v}/seed_{s}/metrics.jsonl") if '"val_loss"' in l]
    return rows[-1]["val_loss"]
loss = {v: [final(v, s) for s in (1, 2)] for v in ("dense", "hash")}
assert loss["dense"][0] != loss["dense"][1], f"the seeds gave the same loss: {loss}"
rows = {r["variant"]: r for r in csv.DictReader(open(f"{out}/summary.csv"))}
for v, xs in loss.items():
    r = rows[v]
    assert int(r["num_seeds"]) == 2, r
    assert abs(float(r["val_loss_mean"]) - statistics.mean(xs)) < 2e-6, (r, xs)
    assert abs(float(r["val_loss_std"]) - statistics.stdev(xs)) < 2e-6, (r, xs)
d, h = loss["dense"], loss["hash"]
# The same seeds: the difference is paired, its error the spread of the per-seed differences.
per_seed = [h[i] - d[i] for i in range(2)]
se = statistics.stdev(per_seed) / math.sqrt(2)
assert rows["hash"]["diff_kind"] == "paired", rows["hash"]
assert abs(float(rows["hash"]["diff_vs_dense"]) - statistics.mean(per_seed)) < 2e-6, rows["hash"]
assert abs(float(rows["hash"]["diff_se"]) - se) < 2e-6, (rows["hash"], se)
assert rows["hash"]["paper"] == "3.40" and rows["dense"]["diff_vs_dense"] == "", rows
# Two variants: the ranks agree (rho 1) when the lower mean is hash's, as the paper's 3.40 < 3.50.
rho = "1.000" if statistics.mean(h) < statistics.mean(d) else "-1.000"
want = f"Spearman rank correlation of the mean validation losses with the paper's numbers (2 variants): {rho}"
assert want in open(f"{out}/summary.md").read(), want
EOF
}
check_summary
[[ $(grep -c '^| ' "$work/out/summary.md") -eq 3 ]] || fail "summary.md: $(cat "$work/out/summary.md")"
# A results table with CRLF line ends (as Python's csv module writes) gives the same summary.
sed 's/$/\r/' "$work/out/results.csv" > "$work/crlf.csv"
"$src/experiments/study_table.sh" "$work/crlf.csv" "$work/out/paper.csv" "$work/crlf_summary.csv" > /dev/null
cmp -s "$work/crlf_summary.csv" "$work/out/summary.csv" || fail "a CRLF results table gives another summary"

# A second call skips all four runs and leaves their metrics alone.
before=$(md5sum "$work"/out/work/runs/*/seed_*/metrics.jsonl)
study --seeds 1,2 --parallel 2 || { cat "$work/study.out"; fail "the second call failed"; }
[[ $(grep -c '] skip .*(finished)' "$work/study.out") -eq 4 ]] || { cat "$work/study.out"; fail "finished runs were not skipped"; }
[[ $(md5sum "$work"/out/work/runs/*/seed_*/metrics.jsonl) == "$before" ]] || fail "a skipped run's metrics changed"
check_summary

# An interrupted run (no done mark, checkpoint at step 2 only) resumes from it and finishes.
rm -rf "$work/out/work/runs/hash/seed_2/study_done" "$work/out/work/runs/hash/seed_2/checkpoints/step_4"
study --seeds 1,2 || { cat "$work/study.out"; fail "the resumed study failed"; }
grep -q '] resume hash/seed_2$' "$work/study.out" || { cat "$work/study.out"; fail "hash/seed_2 did not resume"; }
grep -q 'resum.*step_2\|step_2.*resum' "$work/out/work/logs/hash.seed_2.log" \
  || { cat "$work/out/work/logs/hash.seed_2.log"; fail "the run did not resume from step 2"; }
[[ -d $work/out/work/runs/hash/seed_2/checkpoints/step_4 && -f $work/out/work/runs/hash/seed_2/study_done ]] \
  || fail "the resumed run did not finish"
check_summary
cp "$work/out/results.csv" "$work/finished_results.csv"  # for the report below

# Other settings on the same OUT are refused, naming the run; bad options are refused.
if EXTRA="$EXTRA --set optim.lr=1e-2" study --seeds 1,2; then fail "a run with other settings was resumed"; fi
grep -q "run dense/seed_1 in .* was made with other settings" "$work/study.out" || { cat "$work/study.out"; fail "no error naming the run"; }
if study --seeds 1,x; then fail "--seeds 1,x was accepted"; fi
grep -q "run_study: --seeds: 'x' is not a non-negative integer" "$work/study.out" || fail "$(cat "$work/study.out")"
if study --parallel 0; then fail "--parallel 0 was accepted"; fi
grep -q "run_study: --parallel: '0' is not a positive integer" "$work/study.out" || fail "$(cat "$work/study.out")"

# The report: plots of the runs and of the study table.
python=""
for p in ${PYTHON:-} python3 /usr/bin/python3; do
  if "$p" -c "import matplotlib" 2> /dev/null; then python=$p; break; fi
done
if [[ -z $python ]]; then echo "study_seeds: no python3 with matplotlib (scripts/setup.sh installs it): report skipped"; exit 77; fi
"$python" "$src/experiments/report.py" "$work"/out/work/runs/*/seed_* --summary "$work/out/summary.csv" \
  --results "$work/finished_results.csv" --out "$work/plots" > "$work/report.out" 2>&1 \
  || { cat "$work/report.out"; fail "report.py failed"; }
for png in loss val_loss lr tokens_per_s dropped_fraction balance expert_load_hash_seed_1 study val_loss_flops; do
  f=$work/plots/$png.png
  [[ -s $f ]] || { ls "$work/plots"; fail "no $png.png"; }
  [[ $(head -c 8 "$f" | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]] || fail "$png.png is not a PNG"
done
# --exclude leaves a variant out of study.png; an unknown one is refused by name.
"$python" "$src/experiments/report.py" --summary "$work/out/summary.csv" --exclude hash --out "$work/plots4" \
  > "$work/report.out" 2>&1 || { cat "$work/report.out"; fail "report.py --exclude hash failed"; }
[[ -s $work/plots4/study.png ]] || fail "no study.png without hash"
if "$python" "$src/experiments/report.py" --summary "$work/out/summary.csv" --exclude oracle --out "$work/plots4" \
    > "$work/report.out" 2>&1; then
  fail "report.py accepted --exclude of an unknown variant"
fi
grep -q "report: --exclude: $work/out/summary.csv has no variant oracle" "$work/report.out" || fail "$(cat "$work/report.out")"
# A results table without a row for one of the runs is refused naming the run.
grep -v '^hash,.*,2$' "$work/finished_results.csv" > "$work/partial.csv"
if "$python" "$src/experiments/report.py" "$work"/out/work/runs/*/seed_* --results "$work/partial.csv" \
    --out "$work/plots3" > "$work/report.out" 2>&1; then
  fail "report.py accepted a results table without hash seed 2"
fi
grep -q "report: $work/partial.csv has no row for run hash_seed_2" "$work/report.out" || fail "$(cat "$work/report.out")"
mkdir -p "$work/empty_run"
if "$python" "$src/experiments/report.py" "$work/empty_run" --out "$work/plots2" > "$work/report.out" 2>&1; then
  fail "report.py accepted a directory without metrics"
fi
grep -q "report: $work/empty_run has no metrics.jsonl" "$work/report.out" || fail "$(cat "$work/report.out")"
echo "study_seeds: ok"
