#!/usr/bin/env bash
# Issue 22 on two H200s in one call: the all-to-all against NCCL's, weak scaling, memory peaks
# beside `moe plan`, each new layout's loss curve against one GPU, and the pipeline bubble.
#
# Usage (repo root): experiments/perf/run_two_h200.sh OUT [--cpu]
#   OUT/<section>.jsonl  raw JSON, one object per command: name, cmd (exact), ok, result (the
#                        command's own JSON line) or error, and the section's fields
#   OUT/summary.md       one table per section, each row naming its command
#   OUT/logs/            every command's stdout and stderr; OUT/runs/ the training runs
# --cpu: the same code path on 2 CPU ranks at toy size (MOE=${MOE:-build-cpu/moe}, tiny shapes,
#        train.device=cpu): checks the script, measures none of the targets; no PyTorch anchor.
# Environment: SECTIONS (default "alltoall scaling memory equivalence pipeline") runs a subset
#   (each section rewrites its own .jsonl; the summary covers every .jsonl in OUT);
#   CMD_TIMEOUT seconds per command (GPU 900, CPU 120); EQ_TOL the equivalence tolerance
#   (GPU bf16 5e-3, CPU f32 1e-4); MOE the binary.
# A command that fails is recorded with its error and the script goes on; the exit status is 1
# when any command failed (a missed target is not a failure: the summary says met or missed).
# The sections are called by name (section_$name), which shellcheck cannot follow:
# shellcheck disable=SC2317
set -uo pipefail

usage="usage: experiments/perf/run_two_h200.sh OUT [--cpu]"
out=${1:?$usage}
cpu=0
case ${2:-} in
  --cpu) cpu=1 ;;
  "") ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
mkdir -p "$out/logs" "$out/runs" "$out/data" || exit 1
out=$(cd "$out" && pwd)
logs=$out/logs
failed=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# ---------------------------------------------------------------------------------------------
# Mode: the binary, mpirun, the shapes and the iteration counts.

moe_small=experiments/perf/moe_small.toml
moe_1b=experiments/scaling/moe_1b.toml
gpt2_dense=experiments/perf/gpt2_small_dense.toml
quickstart=experiments/quickstart/config.toml

if ((cpu)); then
  MOE=${MOE:-build-cpu/moe}
  mpi=(mpirun --oversubscribe -np 2)
  # Toy shapes for every config; tiny_moe only for configs with a [moe] section.
  tiny=(--set model.vocab_size=512 --set model.d_model=64 --set model.num_layers=4 --set model.num_heads=4
        --set model.num_kv_heads=4 --set model.seq_len=32 --set model.d_ff=128 --set train.micro_batch_size=4
        --set train.device=cpu)
  tiny_moe=(--set moe.num_experts=8 --set moe.top_k=2 --set moe.d_expert=32 --set moe.d_shared=32)
  dispatch_iters=(--warmup 2 --steps 5)
  bench_iters=(--warmup 1 --steps 3)
  memory_iters=(--warmup 1 --steps 2)
  eq_steps=5 eq_mbs=4 eq_vocab=512 eq_dtype=() eq_tol=${EQ_TOL:-1e-4}
  cmd_timeout=${CMD_TIMEOUT:-120}
else
  D=$PWD/.devdeps/usr
  export LD_LIBRARY_PATH=$D/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  MOE=${MOE:-build/moe}
  mpi=(mpirun --oversubscribe -np 2 -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE -x TORCH_SYMM_MEM_DISABLE_MULTICAST
       -x NVSHMEM_DISABLE_NVLS)
  tiny=() tiny_moe=()
  dispatch_iters=(--warmup 3 --steps 20)
  bench_iters=(--warmup 3 --steps 10)
  memory_iters=(--warmup 2 --steps 2)
  eq_steps=20 eq_mbs=8 eq_vocab=4096 eq_dtype=(--set train.dtype=bf16) eq_tol=${EQ_TOL:-5e-3}
  cmd_timeout=${CMD_TIMEOUT:-900}
fi

# ---------------------------------------------------------------------------------------------
# Helpers.

show() {  # show ARG...: the command as one line, quoting only the arguments that need it
  local a s=""
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then s+=" $a"; else s+=" $(printf %q "$a")"; fi
  done
  echo "${s# }"
}

record() {  # record SECTION KEY=TEXT | KEY:=JSON | KEY@=FILE ...: append one object to OUT/SECTION.jsonl
  # (KEY@=FILE: the last line of FILE that starts with '{', parsed; null when there is none)
  python3 - "$out/$1.jsonl" "${@:2}" <<'PY'
import json, sys
rec = {}
for arg in sys.argv[2:]:
    key, value = arg.split("=", 1)
    if key.endswith(":"):
        rec[key[:-1]] = json.loads(value)
    elif key.endswith("@"):
        lines = [l for l in open(value, errors="replace") if l.startswith("{")]
        rec[key[:-1]] = json.loads(lines[-1]) if lines else None
    else:
        rec[key] = value
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(rec) + "\n")
PY
}

run_logged() {  # run_logged LOG CMD...: CMD under the time limit, stdout to LOG.out, stderr to LOG.err
  local log=$1; shift
  mkdir -p "$(dirname "$log")"
  echo "[$(date +%T)] $(show "$@")" >> "$out/timeline.txt"
  timeout --kill-after=15 "$cmd_timeout" "$@" > "$log.out" 2> "$log.err"
}

fail() {  # fail SECTION NAME RC LOG CMD [FIELD...]: record a failed command with its error
  local section=$1 name=$2 rc=$3 log=$4 cmd=$5 error; shift 5
  if ((rc == 124 || rc == 137)); then error="timed out after ${cmd_timeout}s"
  elif ((rc == 0)); then error="no result in its output"
  else error="exit $rc"; fi
  local why  # the engine's error lines, else the end of stderr
  why=$(grep -m 3 -i 'error' "$log.err" 2> /dev/null || tail -n 4 "$log.err" 2> /dev/null)
  error+=": $(echo "$why" | tr '\n' ' ' | cut -c1-600)"
  record "$section" name="$name" cmd="$cmd" ok:=false error="$error" log="$log" "$@"
  echo "  FAILED $section/$name: $error" >&2
  failed=1
}

measure() {  # measure SECTION NAME [FIELD...] -- CMD...: run CMD, record its last JSON line as result
  local section=$1 name=$2 fields=() rc; shift 2
  while [[ $1 != -- ]]; do fields+=("$1"); shift; done
  shift
  local log=$logs/$section/$name cmd
  cmd=$(show "$@")
  echo "[$section] $name"
  run_logged "$log" "$@"; rc=$?
  if ((rc == 0)) && grep -q '^{' "$log.out"; then
    record "$section" name="$name" cmd="$cmd" ok:=true result@="$log.out" "${fields[@]}"
  else
    fail "$section" "$name" "$rc" "$log" "$cmd" "${fields[@]}"
    return 1
  fi
}

shape_of() {  # shape_of CONFIG: sets `shape` to the toy overrides for CONFIG (empty on the GPU)
  shape=("${tiny[@]}")
  if grep -q '^\[moe\]' "$1"; then shape+=("${tiny_moe[@]}"); fi
}

layout_sets() {  # layout_sets "k=v k=v": sets `sets` to --set parallel.k=v ... (train.* keys as given)
  local kv
  sets=()
  for kv in $1; do
    if [[ $kv == *.* ]]; then sets+=(--set "$kv"); else sets+=(--set "parallel.$kv"); fi
  done
}

make_shard() {  # make_shard FILE VOCAB TOKENS: an llm.c .bin shard of a learnable synthetic sequence
  python3 - "$@" <<'PY'
import array, random, struct, sys
path, vocab, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(22)
successors = [[rng.randrange(vocab) for _ in range(4)] for _ in range(vocab)]
tokens, t = array.array("H"), 0
for _ in range(n):  # each token is followed by one of 4 fixed tokens 90% of the time
    tokens.append(t)
    t = successors[t][rng.randrange(4)] if rng.random() < 0.9 else rng.randrange(vocab)
header = [0] * 256
header[0], header[1], header[2] = 20240520, 1, n
with open(path, "wb") as f:
    f.write(struct.pack("<256i", *header))
    f.write(tokens.tobytes())
PY
}

# ---------------------------------------------------------------------------------------------
# All-to-all: `moe bench dispatch` at MoE-small's and moe_1b's shapes over EP 2 (dispatch and
# combine timed alone, medians, and the shared experts sequential vs overlapped), then NCCL's
# all_to_all_single through torch.distributed at the bytes each phase sent (target >= 90%).

section_alltoall() {
  local cfg name
  for cfg in "$moe_small" "$moe_1b"; do
    name=$(basename "$cfg" .toml)
    shape_of "$cfg"
    measure alltoall "$name" shape="$name" -- \
      "${mpi[@]}" "$MOE" bench dispatch "$cfg" "${shape[@]}" --set parallel.ep=2 "${dispatch_iters[@]}"
  done
  if ((cpu)); then
    record alltoall name=nccl_anchor ok:=true skipped:=true \
      reason="--cpu: no GPUs, NCCL or PyTorch on CPU ranks; the anchor runs on the GPU host only"
    echo "[alltoall] nccl_anchor skipped (--cpu)"
    return
  fi
  # The remote bytes of each phase, from the engine's JSON (rank 0's counts).
  local sizes=()
  mapfile -t sizes < <(python3 - "$out/alltoall.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    rec = json.loads(line)
    r = rec.get("result")
    if not rec.get("ok") or not r:
        continue
    rows = r["rows_sent_remote"] + r["rows_received_remote"]
    row_bytes = r["bytes_out_per_rank"] // rows if rows else 0
    print(f"--bytes={rec['shape']}/dispatch={r['rows_sent_remote'] * row_bytes}")
    print(f"--bytes={rec['shape']}/combine={r['rows_received_remote'] * row_bytes}")
PY
  )
  local launcher=(torchrun)
  command -v torchrun > /dev/null || launcher=(python3 -m torch.distributed.run)
  if ((${#sizes[@]} == 0)); then
    record alltoall name=nccl_anchor ok:=false error="no engine measurement to match"
    failed=1
    return
  fi
  measure alltoall nccl_anchor -- "${launcher[@]}" --standalone --nproc_per_node 2 \
    experiments/perf/anchors/alltoall_anchor.py "${sizes[@]}" --warmup 5 --iters 20
}

# ---------------------------------------------------------------------------------------------
# Weak scaling: MoE-small and dense GPT-2 small at the same per-GPU batch on 1 GPU and 2 (DP 2;
# MoE-small also EP 2 with and without parallel.a2a_overlap). Target: EP 2 >= 1.9x one GPU.

section_scaling() {
  local cfg name
  for cfg in "$moe_small" "$gpt2_dense"; do
    name=$(basename "$cfg" .toml)
    shape_of "$cfg"
    measure scaling "${name}_1rank" model="$name" layout="1 rank" ranks:=1 -- \
      "$MOE" bench train "$cfg" "${shape[@]}" "${bench_iters[@]}"
    measure scaling "${name}_dp2" model="$name" layout="DP 2" ranks:=2 -- \
      "${mpi[@]}" "$MOE" bench train "$cfg" "${shape[@]}" --set parallel.ep=1 "${bench_iters[@]}"
    grep -q '^\[moe\]' "$cfg" || continue
    measure scaling "${name}_ep2" model="$name" layout="EP 2" ranks:=2 -- \
      "${mpi[@]}" "$MOE" bench train "$cfg" "${shape[@]}" --set parallel.ep=2 --set parallel.a2a_overlap=false \
      "${bench_iters[@]}"
    measure scaling "${name}_ep2_overlap" model="$name" layout="EP 2, a2a_overlap" ranks:=2 -- \
      "${mpi[@]}" "$MOE" bench train "$cfg" "${shape[@]}" --set parallel.ep=2 --set parallel.a2a_overlap=true \
      "${bench_iters[@]}"
    # Micro-batch pairs need 2 micro-batches a step: the step holds twice the tokens (tokens/s compares).
    measure scaling "${name}_ep2_pairs" model="$name" layout="EP 2, a2a_overlap + micro-batch pairs (2 micro-batches)" \
      ranks:=2 -- "${mpi[@]}" "$MOE" bench train "$cfg" "${shape[@]}" --set parallel.ep=2 --set parallel.a2a_overlap=true \
      --set parallel.a2a_overlap_microbatches=true --set train.grad_accum=2 "${bench_iters[@]}"
  done
}

# ---------------------------------------------------------------------------------------------
# Memory: MoE-small's peak (rank 0's allocator high-water mark, `moe bench train`) in each layout,
# 4 micro-batches per step (PP needs them), beside `moe plan` for the same config and layout
# (the line marked "<- parallel.zero"; target within 2%); ZeRO-2/3's savings follow in the summary.

memory_layout() {  # memory_layout NAME RANKS "k=v ...": plan, then bench, one record
  local name=$1 ranks=$2 sets=() launch=() plan_log=$logs/memory/${1}_plan plan_cmd plan_bytes planned rc
  layout_sets "$3"
  shape_of "$moe_small"
  local args=("$moe_small" "${shape[@]}" --set train.grad_accum=4 "${sets[@]}")
  local plan=("$MOE" plan "${args[@]}" --world "$ranks")
  plan_cmd=$(show "${plan[@]}")
  run_logged "$plan_log" "${plan[@]}"; rc=$?
  plan_bytes=$(sed -n 's/.*(\([0-9]*\) bytes)  <- parallel\.zero.*/\1/p' "$plan_log.out")
  planned=$(sed -n 's/^planned rank: \([^,]*\),.*/\1/p' "$plan_log.out")
  if [[ -z $plan_bytes ]]; then
    fail memory "$name" "$rc" "$plan_log" "$plan_cmd" layout="$3"
    return 1
  fi
  ((ranks > 1)) && launch=("${mpi[@]}")
  measure memory "$name" layout="$3" ranks:="$ranks" plan_cmd="$plan_cmd" plan_bytes:="$plan_bytes" \
    planned="$planned" -- "${launch[@]}" "$MOE" bench train "${args[@]}" "${memory_iters[@]}"
}

section_memory() {
  memory_layout one_rank 1 ""
  memory_layout dp2 2 "zero=0"
  memory_layout zero1 2 "zero=1"
  memory_layout zero2 2 "zero=2"
  memory_layout zero3 2 "zero=3"
  memory_layout tp2 2 "tp=2"
  memory_layout tp2_sp 2 "tp=2 sequence_parallel=true"
  memory_layout pp2_1f1b 2 "pp=2"
  memory_layout pp2_interleaved 2 "pp=2 pp_virtual=2"
}

# ---------------------------------------------------------------------------------------------
# Equivalence: the quickstart model (plus one gated shared expert, so a2a_overlap has work to
# hide) for eq_steps steps of 4 micro-batches of eq_mbs sequences; each layout on 2 ranks against
# one rank accumulating the same global batch (DP/EP layouts: 2 micro-batches per rank; TP/PP: 4),
# compared with compare_losses.py. bf16 on the GPU, f32 on the CPU.

section_equivalence() {
  local data=data/brown/train.tok
  if [[ ! -s $data ]]; then  # no Brown shard here: a synthetic one (learnable, deterministic)
    data=$out/data/synthetic_v${eq_vocab}.bin
    [[ -s $data ]] || make_shard "$data" "$eq_vocab" 1000000
  fi
  shape_of "$quickstart"
  local common=("$quickstart" "${shape[@]}" "${eq_dtype[@]}" --set moe.num_shared_experts=1
                --set moe.shared_gate=true --set "data.train_path=$data" --set data.val_path= --set data.tokenizer=
                --set "train.steps=$eq_steps" --set train.log_every=1 --set train.eval_every=0
                --set "train.micro_batch_size=$eq_mbs" --set optim.lr=1e-3 --set train.save_every=0
                --set train.overwrite=true)
  local ref=$out/runs/eq_reference ref_cmd rc
  local cmd=("$MOE" train "${common[@]}" --set train.grad_accum=4 --set "train.run_dir=$ref")
  ref_cmd=$(show "${cmd[@]}")
  echo "[equivalence] reference"
  run_logged "$logs/equivalence/reference" "${cmd[@]}"; rc=$?
  if ((rc != 0)) || [[ ! -s $ref/metrics.jsonl ]]; then
    fail equivalence reference "$rc" "$logs/equivalence/reference" "$ref_cmd"
    return 1
  fi
  record equivalence name=reference cmd="$ref_cmd" ok:=true ranks:=1 grad_accum:=4 reference:=true \
    common="$(show "${common[@]}")"
  local spec name layout ga run log steps rel
  for spec in "dp2|zero=0|2" "zero1|zero=1|2" "zero2|zero=2|2" "zero3|zero=3|2" "ep2|ep=2|2" \
              "ep2_overlap|ep=2 a2a_overlap=true|2" "ep2_zero3_overlap|ep=2 zero=3 a2a_overlap=true|2" \
              "ep2_pairs|ep=2 a2a_overlap=true a2a_overlap_microbatches=true|2" \
              "tp2|tp=2|4" "tp2_sp|tp=2 sequence_parallel=true|4" "pp2_1f1b|pp=2|4" \
              "pp2_interleaved|pp=2 pp_virtual=2|4"; do
    IFS='|' read -r name layout ga <<< "$spec"
    layout_sets "$layout"
    run=$out/runs/eq_$name log=$logs/equivalence/$name
    cmd=("${mpi[@]}" "$MOE" train "${common[@]}" --set "train.grad_accum=$ga" "${sets[@]}" --set "train.run_dir=$run")
    echo "[equivalence] $name"
    run_logged "$log" "${cmd[@]}"; rc=$?
    if ((rc != 0)) || [[ ! -s $run/metrics.jsonl ]]; then
      fail equivalence "$name" "$rc" "$log" "$(show "${cmd[@]}")" layout="$layout"
      continue
    fi
    python3 experiments/perf/compare_losses.py "$ref/metrics.jsonl" "$run/metrics.jsonl" > "$log.compare"
    read -r steps rel < <(sed -n 's/^steps compared: \([0-9]*\), max relative difference: \(.*\)$/\1 \2/p' "$log.compare")
    record equivalence name="$name" cmd="$(show "${cmd[@]}")" ok:=true layout="$layout" ranks:=2 grad_accum:="$ga" \
      steps:="${steps:-0}" expected_steps:="$eq_steps" max_rel:="${rel:-null}" tol:="$eq_tol" \
      compare="$(show python3 experiments/perf/compare_losses.py "$ref/metrics.jsonl" "$run/metrics.jsonl")"
  done
}

# ---------------------------------------------------------------------------------------------
# Pipeline: MoE-small on PP 2, 1F1B and interleaved (pp_virtual 2), 4 and 8 micro-batches; the
# measured bubble (1 - mean stage busy time / step wall time; CUDA events on the GPU, host clock
# on the CPU) beside (p-1)/(m+p-1) and the interleaved (p-1)/(v*m+p-1).

section_pipeline() {
  local m v extra
  shape_of "$moe_small"
  for m in 4 8; do
    for v in 1 2; do
      extra=()
      ((v > 1)) && extra=(--set "parallel.pp_virtual=$v")
      measure pipeline "pp2_m${m}_v${v}" p:=2 m:="$m" v:="$v" -- \
        "${mpi[@]}" "$MOE" bench train "$moe_small" "${shape[@]}" --set parallel.pp=2 --set "train.grad_accum=$m" \
        "${extra[@]}" "${bench_iters[@]}"
    done
  done
}

# ---------------------------------------------------------------------------------------------
# summary.md from every OUT/*.jsonl.

summarize() {
  python3 - "$out" <<'PY'
import json, os, sys

out = sys.argv[1]
def load(section):
    path = os.path.join(out, section + ".jsonl")
    return [json.loads(l) for l in open(path)] if os.path.exists(path) else None

run = (load("run") or [{}])[-1]
cpu = run.get("mode") == "cpu"
abbrev = [(run.get("mpi", ""), "$MPI"), (run.get("tiny_moe", ""), "$TINY_MOE"), (run.get("tiny", ""), "$TINY"),
          (out + "/", "$OUT/")]

def cmd(text):
    for full, short in abbrev:
        if full:
            text = text.replace(full, short)
    return f"`{text}`"

def gb(b):
    return "—" if b is None else (f"{b / 1e9:.2f} GB" if b >= 1e8 else f"{b / 1e6:.3f} MB")

def num(x, fmt="{:,.0f}"):
    return "—" if x is None else fmt.format(x)

def table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)

overview = []  # [section, commands ok, failed, skipped, headline]

def status(section, recs, headline):
    if recs is None:
        overview.append([section, "—", "—", "—", "not run"])
        return
    skipped = sum(1 for r in recs if r.get("skipped"))
    ok = sum(1 for r in recs if r.get("ok")) - skipped
    overview.append([section, ok, len(recs) - ok - skipped, skipped, headline])

def failures(recs):
    bad = [r for r in recs if not r.get("ok")]
    return "".join(f"\n- **FAILED** {r['name']}: {r.get('error', '')} — {cmd(r.get('cmd', ''))}" for r in bad)

md = ["# Issue 22 on two GPUs: summary", ""]
if cpu:
    md += ["**CPU toy size (2 MPI ranks, `--cpu`): a check of the script, not a measurement of any target.** "
           "Bandwidths, speeds and bubbles below are of CPU ranks at toy shapes; the NCCL anchor is skipped, "
           "the pipeline stages are timed with host clock marks instead of CUDA events.", ""]
md += [f"- mode: {run.get('mode')}; date: {run.get('date')}; commit: {run.get('commit')}; host: {run.get('host')}",
       f"- devices: {run.get('devices')}",
       f"- `$MPI` = `{run.get('mpi')}`"]
if run.get("tiny"):
    md += [f"- `$TINY` = `{run['tiny']}`", f"- `$TINY_MOE` = `{run['tiny_moe']}`"]
md += ["- raw JSON: `<section>.jsonl` beside this file (each object's `cmd` is the exact command)", ""]

# All-to-all ------------------------------------------------------------------------------------
recs = load("alltoall")
md += ["## All-to-all: engine dispatcher vs NCCL all-to-all at equal bytes (EP 2)", ""]
if recs is None:
    md += ["not run", ""]
    status("all-to-all", None, "")
else:
    anchor = next((r for r in recs if r["name"] == "nccl_anchor"), None)
    nccl = {}
    if anchor and anchor.get("ok") and anchor.get("result"):
        nccl = {s["name"]: s for s in anchor["result"]["sizes"]}
    rows, overlap, heads = [], [], []
    for r in recs:
        res = r.get("result")
        if r["name"] == "nccl_anchor" or not r.get("ok") or not res:
            continue
        sent, recv = res["rows_sent_remote"], res["rows_received_remote"]
        row_bytes = res["bytes_out_per_rank"] // (sent + recv) if sent + recv else 0
        phases = [("dispatch", sent * row_bytes, res["dispatch_ms"]), ("combine", recv * row_bytes, res["combine_ms"])]
        for phase, nbytes, ms in phases:
            gbs = nbytes / (ms / 1e3) / 1e9 if ms else None
            ref = nccl.get(f"{r['shape']}/{phase}")
            ratio = gbs / ref["gb_per_s"] if ref and gbs else None
            met = "—" if ratio is None else ("met" if ratio >= 0.9 else "missed")
            heads.append(f"{r['shape']} {phase} " + (f"{ratio:.2f} of NCCL" if ratio is not None else f"{gbs:.2f} GB/s"))
            rows.append([r["shape"], phase, f"{nbytes:,}", num(ms, "{:.3f}"), num(gbs, "{:.2f}"),
                         num(ref and ref["gb_per_s"], "{:.2f}"), num(ratio, "{:.2f}") + f" ({met})", cmd(r["cmd"])])
        rows.append([r["shape"], "dispatch + combine (one loop)", f"{res['bytes_out_per_rank']:,}",
                     num(res["dispatch_combine_ms"], "{:.3f}"), num(res["alltoall_gb_per_s_per_rank"], "{:.2f}"),
                     "—", "—", cmd(r["cmd"])])
        seq, ovl = res["sequential_ms"], res["overlapped_ms"]
        overlap.append([r["shape"], num(res["shared_experts_ms"], "{:.3f}"), num(seq, "{:.3f}"), num(ovl, "{:.3f}"),
                        num((seq - ovl) / seq if seq else None, "{:.1%}")])
    md += [table(["shape", "phase", "remote bytes per rank", "engine ms (median)", "engine GB/s per rank",
                  "NCCL GB/s, same bytes", "engine / NCCL (target ≥ 0.90)", "command"], rows), ""]
    if anchor is None:
        md += ["NCCL anchor: not run."]
    elif anchor.get("skipped"):
        md += [f"NCCL anchor: **skipped** — {anchor.get('reason')}"]
    elif anchor.get("ok"):
        a = anchor["result"]
        md += [f"NCCL anchor ({a['anchor']}; {a['device']}, torch {a['torch']}, NCCL {a['nccl']}): {cmd(anchor['cmd'])}"]
    md += ["", "Shared experts beside the dispatch (`parallel.a2a_overlap`'s pattern, same commands):", "",
           table(["shape", "shared experts ms", "dispatch, shared, combine ms", "shared inside the dispatch ms",
                  "saved"], overlap)]
    md += [failures(recs), ""]
    status("all-to-all", recs, "; ".join(heads) + ("" if nccl else " (no NCCL anchor)"))

# Weak scaling ----------------------------------------------------------------------------------
recs = load("scaling")
md += ["## Weak scaling: same per-rank batch, 1 and 2 ranks", ""]
if recs is None:
    md += ["not run", ""]
    status("weak scaling", None, "")
else:
    base = {r["model"]: r["result"]["tokens_per_s"] for r in recs if r.get("ok") and r["ranks"] == 1}
    rows, heads = [], []
    for r in recs:
        if not r.get("ok"):
            continue
        res = r["result"]
        s = res["tokens_per_s"] / base[r["model"]] if r["model"] in base else None
        target = ""
        if r["layout"].startswith("EP 2") and s is not None:
            target = " (target ≥ 1.9: " + ("met" if s >= 1.9 else "missed") + ")"
        if r["ranks"] > 1:
            heads.append(f"{r['model']} {r['layout']} {num(s, '{:.2f}')}x")
        rows.append([r["model"], r["layout"], r["ranks"], num(res["tokens_per_s"]), num(res["step_ms"], "{:.1f}"),
                     gb(res["peak_memory_bytes"]), num(s, "{:.2f}") + target, cmd(r["cmd"])])
    md += [table(["model", "layout", "ranks", "tokens/s (all ranks)", "step ms", "peak (rank 0)",
                  "vs 1 rank", "command"], rows), failures(recs), ""]
    status("weak scaling", recs, "vs 1 rank: " + "; ".join(heads))

# Memory ----------------------------------------------------------------------------------------
recs = load("memory")
md += ["## Memory: measured peak (rank 0) beside `moe plan`, MoE-small, 4 micro-batches per step", ""]
if recs is None:
    md += ["not run", ""]
    status("memory", None, "")
else:
    rows, peak, plan, errs = [], {}, {}, []
    for r in recs:
        if not r.get("ok"):
            continue
        m, p = r["result"]["peak_memory_bytes"], r["plan_bytes"]
        peak[r["name"]], plan[r["name"]] = m, p
        err = p / m - 1 if m else None
        errs.append(abs(err) if err is not None else 1.0)
        within = "—" if err is None else ("yes" if abs(err) <= 0.02 else "**no**")
        extra = ""
        if r["name"].startswith("pp2"):
            extra = f"; bubble {r['result'].get('bubble', 0):.1%}"
        rows.append([r["name"], r["layout"] or "one rank", r["ranks"], f"{m:,} ({gb(m)})", f"{p:,}",
                     num(err, "{:+.2%}"), within, r.get("planned", "") + extra, cmd(r["cmd"]), cmd(r["plan_cmd"])])
    md += [table(["layout", "keys", "ranks", "measured peak (bytes)", "`moe plan` (bytes)", "plan error",
                  "within 2%", "planned rank", "command", "plan command"], rows), ""]
    saves = [(a, b, peak[a] - peak[b], plan[a] - plan[b])
             for a, b in [("zero1", "zero2"), ("zero2", "zero3"), ("dp2", "zero3")] if a in peak and b in peak]
    md += ["ZeRO savings (rank 0):", "", table(["step", "measured saving", "planned saving", "saves memory"],
                 [[f"{a} → {b}", f"{ms:,} ({gb(ms)})", f"{ps:,} ({gb(ps)})", "yes" if ms > 0 else "**no**"]
                  for a, b, ms, ps in saves]),
           failures(recs), ""]
    head = f"plan within 2%: {sum(e <= 0.02 for e in errs)}/{len(errs)}"
    head += f" (largest error {max(errs):.2%})" if errs else ""
    head += "".join(f"; {a} → {b} saves {gb(ms)} (plan {gb(ps)})" for a, b, ms, ps in saves[:2])
    status("memory", recs, head)

# Equivalence -----------------------------------------------------------------------------------
recs = load("equivalence")
md += ["## Equivalence: each layout's losses against one rank with the same global batch", ""]
if recs is None:
    md += ["not run", ""]
    status("equivalence", None, "")
else:
    ref = next((r for r in recs if r.get("reference")), None)
    if ref and ref.get("common"):
        common = cmd(ref["common"])  # before $EQ stands for it
        abbrev.insert(0, (ref["common"], "$EQ"))
        md += [f"`$EQ` = {common}", ""]
    if ref:
        md += [f"Reference (1 rank, 4 micro-batches): {cmd(ref['cmd'])}", ""]
    rows, rels, good = [], [], 0
    for r in recs:
        if not r.get("ok") or r.get("reference"):
            continue
        rel, tol = r.get("max_rel"), float(r["tol"])
        within = "yes" if rel is not None and rel <= tol and r["steps"] == r["expected_steps"] else "**no**"
        good += within == "yes"
        rels.append(rel if rel is not None else float("inf"))
        rows.append([r["name"], r["layout"], r["ranks"], r["grad_accum"], f"{r['steps']}/{r['expected_steps']}",
                     num(rel, "{:.2e}"), r["tol"], within, cmd(r["cmd"])])
    md += [table(["layout", "keys", "ranks", "micro-batches per rank", "steps compared", "max relative loss difference",
                  "tolerance", "within", "command"], rows), failures(recs), ""]
    tol = next((r["tol"] for r in recs if "tol" in r), "")
    status("equivalence", recs, f"within {tol}: {good}/{len(rels)} layouts"
           + (f" (largest difference {max(rels):.2e})" if rels else ""))

# Pipeline --------------------------------------------------------------------------------------
recs = load("pipeline")
md += ["## Pipeline bubble: PP 2, MoE-small", ""]
if recs is None:
    md += ["not run", ""]
    status("pipeline", None, "")
else:
    rows, heads = [], []
    for r in recs:
        if not r.get("ok"):
            continue
        res, p, m, v = r["result"], r["p"], r["m"], r["v"]
        heads.append(f"m {m} v {v}: {num(res.get('bubble'), '{:.0%}')} (ideal {(p - 1) / (v * m + p - 1):.0%})")
        rows.append(["1F1B" if v == 1 else f"interleaved (v {v})", p, m, v, num(res.get("bubble"), "{:.1%}"),
                     num(res.get("bubble_ideal"), "{:.1%}"), f"{(p - 1) / (m + p - 1):.1%}",
                     f"{(p - 1) / (v * m + p - 1):.1%}",
                     "/".join(f"{s:.1f}" for s in res.get("stage_ms", [])), num(res["step_ms"], "{:.1f}"), cmd(r["cmd"])])
    timing = "host clock marks (CPU ranks)" if cpu else "CUDA events (DeviceIntervals)"
    note = ""
    if any(r.get("ok") and r["v"] > 1 and abs(r["result"].get("bubble_ideal", 0) - (r["p"] - 1) / (r["v"] * r["m"] + r["p"] - 1)) > 1e-9
           for r in recs):
        note = (" Under interleaving the engine's `bubble_ideal` is 1F1B's (p−1)/(m+p−1): it does not count"
                " `pp_virtual`; compare the measured bubble with the last column.")
    md += [f"Measured from {timing}, the last timed step. The engine's `bubble_ideal` field is printed as it "
           "reports it; the two formula columns are computed here." + note, "",
           table(["schedule", "p", "m", "v", "measured bubble", "engine's bubble_ideal", "(p−1)/(m+p−1)",
                  "(p−1)/(v·m+p−1)", "stage ms", "step ms", "command"], rows), failures(recs), ""]
    status("pipeline", recs, "bubble " + "; ".join(heads))

first = md.index("## All-to-all: engine dispatcher vs NCCL all-to-all at equal bytes (EP 2)")
md[first:first] = ["## Overview", "", table(["section", "commands ok", "failed", "skipped", "result"], overview), ""]

open(os.path.join(out, "summary.md"), "w").write("\n".join(md) + "\n")
PY
}

# ---------------------------------------------------------------------------------------------
# Main.

if ((!cpu)); then
  if [[ ! -x $MOE ]]; then  # build the executable as run_h200.sh does
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$D" > "$out/configure.log" 2>&1 \
      || { tail -30 "$out/configure.log"; exit 1; }
    cmake --build build -j "$(nproc)" --target "${MOE_BUILD_TARGET:-moe}" > "$out/build.log" 2>&1 \
      || { grep -E "error|FAILED" -A5 "$out/build.log" | head -60; exit 1; }
  fi
  devices=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$out/gpu.txt" \
    | paste -sd ';')
else
  [[ -x $MOE ]] || { echo "no $MOE: build the CPU binary first" >&2; exit 1; }
  devices="CPU: $(nproc) cores, 2 MPI ranks ($(mpirun --version 2>&1 | head -1))"
fi
commit=$(git rev-parse --short HEAD 2> /dev/null)$(git diff --quiet HEAD 2> /dev/null || echo "+dirty")
: > "$out/run.jsonl"
record run mode="$( ((cpu)) && echo cpu || echo gpu)" date="$(date -u +%FT%TZ)" commit="$commit" \
  host="$(hostname)" devices="$devices" moe="$MOE" mpi="$(show "${mpi[@]}")" tiny="$(show "${tiny[@]}")" \
  tiny_moe="$(show "${tiny_moe[@]}")"

start=$SECONDS
for section in ${SECTIONS:-alltoall scaling memory equivalence pipeline}; do
  if [[ $(type -t "section_$section") != function ]]; then
    echo "unknown section '$section'" >&2; failed=1; continue
  fi
  : > "$out/$section.jsonl"
  "section_$section"
done
summarize || failed=1
echo "done in $((SECONDS - start)) s: $out/summary.md$( ((failed)) && echo ' (some commands FAILED)')"
exit "$failed"
