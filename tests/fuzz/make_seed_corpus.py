#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz corpus (tests/fuzz/corpus/<target>/seed_*): valid files and
the malformed cases the readers must refuse. Inputs libFuzzer finds later are added beside them."""
import json
import os
import struct
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    folder = os.path.join(root, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "seed_" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def config_seeds():
    put("config_toml", "empty", "")
    put("config_toml", "full", """[model]
vocab_size = 512
d_model = 64
num_layers = 2
num_heads = 4
num_kv_heads = 2
seq_len = 32
activation = "swiglu"
[moe]
num_experts = 8
top_k = 2
d_expert = 64
granularity = 2
num_shared_experts = 1
router = "topk"
[train]
steps = 10
micro_batch_size = 2
run_dir = "runs/x"
[optim]
lr = 1e-3
[schedule]
kind = "step"
step_fractions = [0.5, 0.75]
[parallel]
pp = 2
pp_layers = [1, 1]
""")
    put("config_toml", "unknown_key", "[model]\nd_modle = 64\n")
    put("config_toml", "wrong_type", "[model]\nd_model = \"64\"\n")
    put("config_toml", "huge", "[model]\nd_model = 4611686018427387904\nd_ff = 9223372036854775807\n")
    put("config_toml", "nan", "[optim]\nlr = nan\nbeta1 = inf\n")
    put("config_toml", "deep_array", "[model]\nd_model = " + "[" * 5000 + "]" * 5000 + "\n")
    put("config_toml", "deep_inline", "model = " + "{a = " * 2000 + "1" + "}" * 2000 + "\n")
    put("config_toml", "dotted", "model.d_model = 64\nmoe = { num_experts = 4, top_k = 1 }\n")
    put("config_toml", "unterminated", "[train]\nrun_dir = \"abc\n")
    put("config_toml", "unicode", "[train]\nrun_dir = \"r\\u00e9sum\\u00e9/\\U0001F600\"\n")
    put("config_toml", "negative", "[parallel]\npp = 2\npp_layers = [-1, 3]\n[train]\nseed = -5\n")


def safetensors_bytes(header, data=b"", pad=True):
    text = json.dumps(header, separators=(",", ":"))
    if pad:
        text += " " * ((8 - (8 + len(text)) % 8) % 8)
    return struct.pack("<Q", len(text)) + text.encode() + data


def safetensors_seeds():
    f32 = struct.pack("<4f", 1, 2, 3, 4)
    ok = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
          "__metadata__": {"format": "moe-engine"}}
    put("safetensors", "valid", safetensors_bytes(ok, f32))
    two = {"a": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]},
           "b": {"dtype": "BF16", "shape": [4], "data_offsets": [8, 16]},
           "e": {"dtype": "F64", "shape": [0, 3], "data_offsets": [16, 16]}}
    put("safetensors", "mixed_dtypes", safetensors_bytes(two, f32))
    put("safetensors", "relabelled_i32", safetensors_bytes(
        {"w": {"dtype": "I32", "shape": [2, 2], "data_offsets": [0, 16]}}, f32))
    put("safetensors", "overlap", safetensors_bytes(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, f32))
    put("safetensors", "outside", safetensors_bytes(
        {"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, f32))
    put("safetensors", "truncated", safetensors_bytes(ok, f32)[:-5])
    put("safetensors", "huge_length", struct.pack("<Q", 2**64 - 1) + b"{}")
    put("safetensors", "huge_shape", safetensors_bytes(
        {"w": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 16]}}, f32))
    put("safetensors", "deep_shape", struct.pack("<Q", 20002) + b"{" + b"[" * 10000 + b"]" * 10000 + b"}")
    put("safetensors", "bad_metadata", safetensors_bytes({"__metadata__": {"k": 1}}))
    put("safetensors", "not_json", struct.pack("<Q", 8) + b"{\"a\":[1,")
    put("safetensors", "short", b"\x05\x00")


def token_seeds():
    def native(code, tokens, count=None, version=1):
        fmt = "<H" if code == 2 else "<I"
        body = b"".join(struct.pack(fmt, t) for t in tokens)
        head = b"MOETOK\0\0" + struct.pack("<IIQ", version, code, len(tokens) if count is None else count)
        return head + b"\0" * 40 + body

    def llmc(version, tokens, count=None):
        fmt = "<H" if version == 1 else "<I"
        head = struct.pack("<3i", 20240520, version, len(tokens) if count is None else count) + b"\0" * (253 * 4)
        return head + b"".join(struct.pack(fmt, t) for t in tokens)

    put("token_shard", "native_u16", native(2, [1, 2, 3, 4, 5, 6, 7, 8, 9]))
    put("token_shard", "native_u32", native(4, [70000, 1, 2, 3, 4, 2**31 + 5]))
    put("token_shard", "native_truncated", native(2, [1, 2, 3], count=10))
    put("token_shard", "native_huge_count", native(2, [1, 2], count=2**63))
    put("token_shard", "native_bad_dtype", native(3, [1, 2]))
    put("token_shard", "native_bad_version", native(2, [1, 2], version=7))
    put("token_shard", "native_trailing", native(2, [1, 2, 3]) + b"\x01")
    put("token_shard", "llmc_v1", llmc(1, [5, 6, 7, 8, 9, 10]))
    put("token_shard", "llmc_v2", llmc(2, [5, 60000, 7, 8]))
    put("token_shard", "llmc_negative", llmc(1, [1], count=-1))
    put("token_shard", "bad_magic", b"GARBAGE!" + b"\0" * 60)
    put("token_shard", "empty", b"")


def megatron_seeds():
    """Inputs of fuzz_megatron_idx: [u16 n][n bytes of .bin][.idx], by Megatron-Core's layout."""
    def idx(code, lengths, docs, itemsize=None, pointers=None, version=1, count=None, magic=b"MMIDIDX\0\0"):
        size = itemsize or {8: 2, 4: 4}.get(code, 2)
        if pointers is None:
            pointers, at = [], 0
            for n in lengths:
                pointers.append(at)
                at += n * size
        head = magic + struct.pack("<QBQQ", version, code, len(lengths) if count is None else count, len(docs))
        return (head + struct.pack("<%di" % len(lengths), *lengths) + struct.pack("<%dq" % len(pointers), *pointers)
                + struct.pack("<%dq" % len(docs), *docs))

    def pair(bin_bytes, idx_bytes):
        return struct.pack("<H", len(bin_bytes)) + bin_bytes + idx_bytes

    u16 = struct.pack("<11H", 5, 6, 7, 2, 8, 9, 2, 1000, 65535, 0, 2)
    put("megatron_idx", "u16", pair(u16, idx(8, [4, 3, 4], [0, 1, 2, 3])))
    i32 = struct.pack("<10i", 10, 11, 12, 13, 14, 70000, 2, 3, 2**31 - 1, 2)
    put("megatron_idx", "sentences_i32", pair(i32, idx(4, [2, 3, 2, 1, 2], [0, 2, 4, 4, 5])))
    put("megatron_idx", "empty_dataset", pair(b"", idx(8, [], [0])))
    put("megatron_idx", "bin_truncated", pair(u16[:-3], idx(8, [4, 3, 4], [0, 1, 2, 3])))
    put("megatron_idx", "bin_longer", pair(u16 + b"\0\0", idx(8, [4, 3, 4], [0, 1, 2, 3])))
    put("megatron_idx", "bad_magic", pair(u16, idx(8, [4, 3, 4], [0, 1, 2, 3], magic=b"MMIDIDY\0\0")))
    put("megatron_idx", "header_cut", pair(u16, idx(8, [4, 3, 4], [0, 1, 2, 3])[:20]))
    put("megatron_idx", "arrays_cut", pair(u16, idx(8, [4, 3, 4], [0, 1, 2, 3])[:-5]))
    put("megatron_idx", "version_2", pair(u16, idx(8, [4, 3, 4], [0, 1, 2, 3], version=2)))
    put("megatron_idx", "float32", pair(u16 + u16, idx(7, [4, 3, 4], [0, 1, 2, 3], itemsize=4)))
    put("megatron_idx", "unknown_dtype", pair(u16, idx(42, [4, 3, 4], [0, 1, 2, 3])))
    put("megatron_idx", "huge_count", pair(u16, idx(8, [4, 3, 4], [0, 1, 2, 3], count=2**62)))
    put("megatron_idx", "pointer_gap", pair(u16, idx(8, [4, 3, 4], [0, 1, 2, 3], pointers=[0, 10, 14])))
    put("megatron_idx", "negative_length", pair(u16, idx(8, [4, -3, 4], [0, 1, 2, 3], pointers=[0, 8, 2])))
    put("megatron_idx", "docs_decrease", pair(u16, idx(8, [4, 3, 4], [0, 2, 1, 3])))
    put("megatron_idx", "docs_short", pair(u16, idx(8, [4, 3, 4], [0, 1, 2])))
    put("megatron_idx", "no_docs", pair(u16, idx(8, [4, 3, 4], [])))
    put("megatron_idx", "multimodal", pair(u16, idx(8, [4, 3, 4], [0, 1, 2, 3]) + b"\0\1\0"))
    put("megatron_idx", "trailing", pair(u16, idx(8, [4, 3, 4], [0, 1, 2, 3]) + b"\0"))
    put("megatron_idx", "short", b"\x05")


if __name__ == "__main__":
    config_seeds()
    safetensors_seeds()
    token_seeds()
    megatron_seeds()
    print("seed corpus written to", root, file=sys.stderr)
