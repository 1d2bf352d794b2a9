#!/usr/bin/env python3
# Builds the English corpus from unpacked packages: extract each source's documents, clean them,
# drop duplicate documents, split train/val/test by a seeded hash, write the splits and a table.
"""Usage:
  build_corpus.py text --sources SOURCES.tsv --root UNPACKED --out DIR [--seed N] [--val F] [--test F]
                       [--sample F]
      writes DIR/train.txt, val.txt, test.txt (documents separated by one blank line, the format
      `moe tokenize` reads), DIR/sample.txt (the tokenizer-training sample, a part of train.txt)
      and DIR/composition.tsv (per source and split: documents and words).
  build_corpus.py tokens --text DIR --shards SHARD_DIR
      adds the token counts per source, read from SHARD_DIR/{train,val,test}.tok (written by
      `moe tokenize` from DIR's splits), and writes SHARD_DIR/composition.md.
Everything is deterministic: the same packages and options give the same bytes."""
import argparse
import array
import hashlib
import os
import re
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sources  # noqa: E402

SPLITS = ("train", "val", "test")
MIN_DOC_WORDS = 50          # shorter documents (stubs, index pages) are dropped
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u3000]+")
_LETTER = re.compile(r"[^\W\d_]")
_NORMAL = re.compile(r"[\W_]+")


def clean_document(lines):
    """Lines with control characters removed, spaces collapsed and trimmed; lines without a
    letter (rules, numbers, art) and empty lines dropped. The document has no blank line."""
    out = []
    for line in lines:
        line = _SPACES.sub(" ", _CONTROL.sub("", line.replace("\t", " "))).strip()
        if line and _LETTER.search(line):
            out.append(line)
    return out


def normal_hash(text):
    """Hash of the text lowercased with every run of non-word characters as one space: documents
    that differ only in case, punctuation or spacing count as duplicates."""
    normal = _NORMAL.sub(" ", text.lower()).strip()
    return hashlib.sha256(normal.encode("utf-8")).hexdigest()


def split_of(doc_hash, seed, val, test):
    """'val', 'test' or 'train' from a seeded hash of the document's normalised text, so a
    document's split depends on nothing but its content and the seed."""
    digest = hashlib.sha256(f"{seed}:{doc_hash}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "val" if u < val else "test" if u < val + test else "train"


def in_sample(doc_hash, seed, fraction):
    """Whether a train document goes to sample.txt, by another seeded hash of its text."""
    digest = hashlib.sha256(f"sample:{seed}:{doc_hash}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def read_sources(path):
    """Rows of SOURCES.tsv (source, dir, package, version, licence, sha256, url), '#' comments."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 7:
                raise SystemExit(f"{path}:{line_no}: expected 7 tab-separated fields, got {len(fields)}")
            row = dict(zip(("source", "dir", "package", "version", "licence", "sha256", "url"), fields))
            if row["source"] not in sources.EXTRACTORS:
                raise SystemExit(f"{path}:{line_no}: unknown source '{row['source']}' "
                                 f"(known: {', '.join(sources.EXTRACTORS)})")
            rows.append(row)
    return rows


def build_text(args):
    rows = read_sources(args.sources)
    order = [name for name in sources.EXTRACTORS if any(r["source"] == name for r in rows)]
    seen = {}
    splits = {s: [] for s in SPLITS}
    sample = []
    table = []
    for name in order:
        extract = sources.EXTRACTORS[name][0]
        stats = {"documents": 0, "duplicates": 0, "short": 0}
        counts = {s: [0, 0] for s in SPLITS}  # documents, words
        for row in (r for r in rows if r["source"] == name):
            root = os.path.join(args.root, row["dir"])
            if not os.path.isdir(root):
                raise SystemExit(f"{root}: the unpacked package of source '{name}' is missing")
            for lines in extract(root):
                stats["documents"] += 1
                lines = clean_document(lines)
                text = "\n".join(lines)
                words = len(text.split())
                if words < MIN_DOC_WORDS:
                    stats["short"] += 1
                    continue
                doc_hash = normal_hash(text)
                if doc_hash in seen:
                    stats["duplicates"] += 1
                    continue
                seen[doc_hash] = name
                split = split_of(doc_hash, args.seed, args.val, args.test)
                splits[split].append(text)
                counts[split][0] += 1
                counts[split][1] += words
                if split == "train" and in_sample(doc_hash, args.seed, args.sample):
                    sample.append(text)
        meta = [r for r in rows if r["source"] == name]
        table.append((name, meta, stats, counts))
        print(f"build_corpus: {name}: {stats['documents']} documents, {stats['duplicates']} duplicates, "
              f"{stats['short']} under {MIN_DOC_WORDS} words; train {counts['train'][0]} docs / "
              f"{counts['train'][1]} words", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    for split in SPLITS:
        write_text(os.path.join(args.out, f"{split}.txt"), splits[split])
    write_text(os.path.join(args.out, "sample.txt"), sample)
    write_composition(os.path.join(args.out, "composition.tsv"), table)


def write_text(path, docs):
    """Documents separated by one blank line, with a final newline; written to a temporary file
    and renamed, so an interrupted run leaves no half-written split."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n\n".join(docs))
        if docs:
            f.write("\n")
    os.replace(tmp, path)


def write_composition(path, table):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write("source\tpackages\tlicence\textracted\tduplicates\tshort\t"
                + "\t".join(f"{s}_docs\t{s}_words" for s in SPLITS) + "\n")
        for name, meta, stats, counts in table:
            packages = " + ".join(f"{m['package']} {m['version']}" for m in meta)
            licence = meta[0]["licence"]
            f.write(f"{name}\t{packages}\t{licence}\t{stats['documents']}\t{stats['duplicates']}\t"
                    f"{stats['short']}\t" + "\t".join(f"{counts[s][0]}\t{counts[s][1]}" for s in SPLITS) + "\n")
    os.replace(tmp, path)


# --- token counts --------------------------------------------------------------------------------

def read_tok(path):
    """Token ids of a native .tok shard (docs/data.md: 64-byte header, u16 or u32 tokens)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 64 or data[:8] != b"MOETOK\0\0":
        raise SystemExit(f"{path}: not a native token shard (bad magic)")
    _, dtype, count = struct.unpack_from("<IIQ", data, 8)
    width = {2: 2, 4: 4}.get(dtype)
    if width is None or len(data) != 64 + count * width:
        raise SystemExit(f"{path}: bad dtype code {dtype} or size {len(data)} for {count} tokens")
    ids = array.array("H" if width == 2 else "I")
    ids.frombytes(data[64:])
    if sys.byteorder == "big":
        ids.byteswap()
    return ids


def count_tokens(args):
    """Tokens per source and split: each document ends with one EOS (id 2), the sources come in
    composition order, so the k-th run of EOS-terminated documents belongs to the k-th source."""
    with open(os.path.join(args.text, "composition.tsv"), encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = [dict(zip(header, line.rstrip("\n").split("\t"))) for line in f if line.strip()]
    tokens = {}
    for split in SPLITS:
        ids = read_tok(os.path.join(args.shards, f"{split}.tok"))
        ends = [i for i, t in enumerate(ids) if t == 2]
        expected = sum(int(r[f"{split}_docs"]) for r in rows)
        if len(ends) != expected:
            raise SystemExit(f"{args.shards}/{split}.tok: {len(ends)} documents (EOS tokens) but "
                             f"composition.tsv lists {expected}")
        first_doc, first_tok = 0, 0
        for r in rows:
            num_docs = int(r[f"{split}_docs"])
            end_tok = ends[first_doc + num_docs - 1] + 1 if num_docs else first_tok
            tokens[(r["source"], split)] = end_tok - first_tok
            first_doc, first_tok = first_doc + num_docs, end_tok
    write_table(os.path.join(args.shards, "composition.md"), rows, tokens)


def write_table(path, rows, tokens):
    total = {k: 0 for k in ("docs", "words", "train", "val", "test")}
    lines = ["| source | package (version) | licence | documents | words | train tokens | val tokens | test tokens |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        docs = sum(int(r[f"{s}_docs"]) for s in SPLITS)
        words = sum(int(r[f"{s}_words"]) for s in SPLITS)
        t = [tokens[(r["source"], s)] for s in SPLITS]
        for key, value in zip(("docs", "words", "train", "val", "test"), [docs, words] + t):
            total[key] += value
        lines.append(f"| {r['source']} | {r['packages']} | {r['licence']} | {docs:,} | {words:,} | "
                     f"{t[0]:,} | {t[1]:,} | {t[2]:,} |")
    lines.append(f"| **total** | | | {total['docs']:,} | {total['words']:,} | {total['train']:,} | "
                 f"{total['val']:,} | {total['test']:,} |")
    with open(f"{path}.tmp", "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(f"{path}.tmp", path)
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    text = sub.add_parser("text", help="extract, clean, deduplicate and split")
    text.add_argument("--sources", required=True)
    text.add_argument("--root", required=True)
    text.add_argument("--out", required=True)
    text.add_argument("--seed", type=int, default=1234)
    text.add_argument("--val", type=float, default=0.01)
    text.add_argument("--test", type=float, default=0.01)
    text.add_argument("--sample", type=float, default=0.10, help="share of train documents in sample.txt")
    tok = sub.add_parser("tokens", help="token counts per source from the shards")
    tok.add_argument("--text", required=True)
    tok.add_argument("--shards", required=True)
    args = parser.parse_args()
    if args.command == "text":
        if not (0 <= args.val and 0 <= args.test and args.val + args.test < 1):
            raise SystemExit(f"--val {args.val} and --test {args.test} must be >= 0 and add up to less than 1")
        build_text(args)
    else:
        count_tokens(args)


if __name__ == "__main__":
    main()
