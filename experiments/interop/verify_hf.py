#!/usr/bin/env python3
"""Verify `moe convert` against transformers (the reference) on the GPU host: one command, one table.

For each family (llama, mistral, qwen2 with its q/k/v biases, gpt2, mixtral, qwen2_moe, olmoe) and
dtype (float32, bfloat16), plus llama with attention and MLP biases and llama with llama3 and linear
rope scaling, a tiny random model (biases random too) is created with transformers and saved (some
cases sharded); then
  import   `moe convert --from-hf`, and `moe logits` compared with transformers' fp32 logits
           (the bf16 models are loaded in fp32: both sides compute in fp32 from the same values);
  export   `moe convert --to-hf` of the imported run: every tensor byte-identical to the source,
           and from_pretrained of the export gives the same logits;
  trained  (mixtral and llama, fp32) 3 training steps of the engine on random tokens, exported,
           reloaded with from_pretrained and compared with `moe logits` of the trained run.
One Mixtral and one Qwen2-MoE model are also saved in transformers 5's fused expert layout
(save_original_format=False) and compared by logits. A Llama with rope_type "yarn" is checked to
be refused with a message naming the field.
Needs only PyTorch, transformers (5) and its safetensors dependency.

usage: python3 experiments/interop/verify_hf.py [--moe build/moe] [--work DIR] [--keep]
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file

TOKENS = [3, 17, 99, 0, 5, 5, 64, 11, 120, 7, 42, 42, 1, 2, 90, 33]
TOL = 1e-4  # max |engine - reference| / max |reference|


def rope_kwargs(theta, scaling):
    """rope_theta and a scaling dict in the form this transformers takes (5: rope_parameters)."""
    if int(transformers.__version__.split(".")[0]) >= 5:
        return dict(rope_parameters={"rope_type": "default", "rope_theta": theta, **(scaling or {})})
    return dict(rope_theta=theta, rope_scaling=scaling)


# Variants "family+feature": llama+bias (attention_bias, mlp_bias), llama+llama3 (head_dim 16, theta
# 500000, original 64 positions: pair 0 kept, pair 1 in the smoothed band, the rest divided),
# llama+linear, llama+yarn (refused).
SCALINGS = {"llama3": dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                           original_max_position_embeddings=64),
            "linear": dict(rope_type="linear", factor=2.0),
            "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16)}


def tiny_config(family):
    common = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, hidden_act="silu")
    if family == "llama+bias":
        return transformers.LlamaConfig(rope_theta=500000.0, attention_bias=True, mlp_bias=True, **common)
    if family.startswith("llama+"):
        return transformers.LlamaConfig(**rope_kwargs(500000.0, SCALINGS[family[6:]]), **common)
    if family == "llama":
        return transformers.LlamaConfig(rope_theta=500000.0, **common)
    if family == "mistral":
        return transformers.MistralConfig(sliding_window=None, rope_theta=1e6, **common)
    if family == "qwen2":
        return transformers.Qwen2Config(use_sliding_window=False, **common)
    if family == "mixtral":
        return transformers.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, **common)
    if family == "qwen2_moe":
        return transformers.Qwen2MoeConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                           shared_expert_intermediate_size=48, norm_topk_prob=False,
                                           decoder_sparse_step=1, mlp_only_layers=[], **common)
    if family == "olmoe":
        return transformers.OlmoeConfig(num_experts=4, num_experts_per_tok=2, **common)
    if family == "gpt2":  # the engine's learned position table has model.seq_len rows: n_positions = len(TOKENS)
        return transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=len(TOKENS),
                                       activation_function="gelu_new")
    raise ValueError(family)


def make_model(family, seed):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
    with torch.no_grad():  # weights large enough that the logits differ visibly between tokens
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:  # biases too (Qwen2's q/k/v, GPT-2's, Llama's attention_bias / mlp_bias)
                p.normal_(0.0, 0.1)
    return model.eval()


def ref_logits(directory, n):
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([TOKENS[:n]])).logits[0].double()


def run(args, check=True):
    p = subprocess.run(args, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(" ".join(args) + "\n" + p.stdout + p.stderr)
    return p


def engine_logits(moe, run_dir, work, n):
    out = os.path.join(work, "logits.json")
    run([moe, "logits", run_dir, "--tokens", ",".join(map(str, TOKENS[:n])), "--out", out])
    with open(out) as f:
        return torch.tensor(json.load(f)["logits"], dtype=torch.float64)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def tensors_identical(a_dir, b_dir):
    def load(d):
        out = {}
        for f in sorted(os.listdir(d)):
            if f.endswith(".safetensors"):
                out.update(load_file(os.path.join(d, f)))
        return out
    a, b = load(a_dir), load(b_dir)
    if a.keys() != b.keys():
        return False, f"names differ: {sorted(a.keys() ^ b.keys())[:4]}"
    for k in a:
        if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or not torch.equal(a[k], b[k]):
            return False, f"{k} differs"
    return True, f"{len(a)} tensors"


def write_llmc_tokens(path, n, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(0, vocab, (n,), generator=g).tolist()
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", 20240520, 1, n, *([0] * 253)))
        f.write(struct.pack(f"<{n}H", *toks))


def check_case(moe, work, family, dtype, sharded, trained, fused=False):
    name = (f"{family.replace('+', '-')}-{'bf16' if dtype == torch.bfloat16 else 'fp32'}{'-sharded' if sharded else ''}"
            f"{'-fused' if fused else ''}")
    case = os.path.join(work, name)
    hf, run_dir, exp = (os.path.join(case, x) for x in ("hf", "run", "export"))
    os.makedirs(case)
    model = make_model(family, 1).to(dtype)
    if fused:  # transformers 5's own layout (experts.gate_up_proj / down_proj) instead of the Hub's
        model.save_pretrained(hf, save_original_format=False)
    else:
        model.save_pretrained(hf, max_shard_size="100KB" if sharded else "10GB")
    n = len(TOKENS)
    ref = ref_logits(hf, n)
    # A resumed run keeps its data and batch settings: they go into config.toml at import.
    data = os.path.join(case, "tokens.bin")
    write_llmc_tokens(data, 4096, 128, 2)
    run([moe, "convert", "--from-hf", hf, "--out", run_dir, "--seq-len", str(n), "--set", "train.device=cpu",
         "--set", f"data.train_path={data}", "--set", f"data.val_path={data}", "--set", "train.micro_batch_size=2"])
    e_import = rel(engine_logits(moe, run_dir, case, n), ref)
    run([moe, "convert", "--to-hf", run_dir, "--out", exp])
    same, what = tensors_identical(hf, exp) if not fused else (True, "fused source: logits only")
    e_export = rel(ref_logits(exp, n), ref)
    e_trained = float("nan")
    if trained:
        run([moe, "train", os.path.join(run_dir, "config.toml"), "--set", "train.steps=3", "--set",
             "train.eval_every=0"])
        trained_exp = os.path.join(case, "trained_export")
        run([moe, "convert", "--to-hf", run_dir, "--out", trained_exp, "--dtype", "float32"])
        e_trained = rel(engine_logits(moe, run_dir, case, n), ref_logits(trained_exp, n))
    ok = e_import <= TOL and e_export <= TOL and same and (not trained or e_trained <= TOL)
    return [name, f"{e_import:.2e}", f"{e_export:.2e}", "yes" if same else f"NO ({what})",
            "-" if not trained else f"{e_trained:.2e}", "ok" if ok else "FAIL"]


def check_refused(moe, work, family, expect):
    hf = os.path.join(work, family.replace("+", "-"))
    make_model(family, 1).save_pretrained(hf)
    p = run([moe, "convert", "--from-hf", hf, "--out", hf + "-run"], check=False)
    msg = (p.stdout + p.stderr).strip().splitlines()[-1] if (p.stdout + p.stderr).strip() else ""
    ok = p.returncode != 0 and expect in msg
    return [family, "-", "-", "-", "-", ("ok" if ok else "FAIL") + f" (refused: {msg[:70]})"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moe", default="build/moe")
    ap.add_argument("--work", default="")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    moe = os.path.abspath(a.moe)
    work = a.work or tempfile.mkdtemp(prefix="verify_hf_")
    os.makedirs(work, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, work dir {work}")
    rows = []
    cases = [("llama", torch.float32, False, True), ("llama", torch.bfloat16, True, False),
             ("mistral", torch.float32, False, False), ("mistral", torch.bfloat16, False, False),
             ("qwen2", torch.float32, True, False), ("qwen2", torch.bfloat16, False, False),
             ("mixtral", torch.float32, False, True), ("mixtral", torch.bfloat16, True, False),
             ("qwen2_moe", torch.float32, True, False), ("qwen2_moe", torch.bfloat16, False, False),
             ("gpt2", torch.float32, False, True), ("gpt2", torch.bfloat16, True, False),
             ("olmoe", torch.float32, False, True), ("olmoe", torch.bfloat16, True, False),
             ("llama+bias", torch.float32, False, True), ("llama+llama3", torch.float32, False, False),
             ("llama+llama3", torch.bfloat16, False, False), ("llama+linear", torch.float32, False, False),
             ("mixtral", torch.float32, False, False, True), ("qwen2_moe", torch.bfloat16, False, False, True),
             ("olmoe", torch.float32, False, False, True)]
    for case in cases:
        family, dtype = case[0], case[1]
        try:
            rows.append(check_case(moe, work, *case))
        except Exception as e:  # one failing family does not hide the others
            rows.append([f"{family}-{dtype}", "-", "-", "-", "-", "FAIL: " + str(e).strip().splitlines()[-1][:90]])
    try:
        rows.append(check_refused(moe, work, "llama+yarn", "rope_type 'yarn'"))
    except Exception as e:
        rows.append(["llama+yarn", "-", "-", "-", "-", "FAIL: " + str(e).strip().splitlines()[-1][:90]])
    head = ["case", "import rel err", "export rel err", "round trip bit-exact", "trained rel err", "result"]
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    for r in [head, ["-" * w for w in widths]] + rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    if not a.keep and not a.work:
        shutil.rmtree(work)
    sys.exit(0 if all(r[-1].startswith("ok") for r in rows) else 1)


if __name__ == "__main__":
    main()
