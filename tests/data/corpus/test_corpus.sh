#!/usr/bin/env bash
# The corpus pipeline on a tiny fixture (make_fixture.py), offline: build_corpus.py's exact output
# and determinism, then scripts/fetch_corpus.sh over file: archives (verify, unpack, split,
# tokenize, record and check checksums, reuse the cache) and its errors. Usage: SOURCE_DIR MOE
set -euo pipefail
src=$1
moe=$2
here=$src/tests/data/corpus
build=$src/scripts/corpus/build_corpus.py
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "test_corpus: $*"; exit 1; }

python3 "$here/make_fixture.py" "$work/fx"
split=(--val 0.25 --test 0.25 --sample 1)

# 1. Extraction, cleaning, dedup and split give exactly the expected text, the same bytes twice.
for run in 1 2; do
  python3 "$build" text --sources "$work/fx/unpacked.tsv" --root "$work/fx/unpacked" --out "$work/text$run" \
    "${split[@]}" 2> "$work/build$run.log"
done
for f in train.txt val.txt test.txt composition.tsv; do
  cmp "$here/expected/$f" "$work/text1/$f" || { diff "$here/expected/$f" "$work/text1/$f" | head -20; fail "$f differs from expected/$f"; }
  cmp "$work/text1/$f" "$work/text2/$f" || fail "$f differs between two runs"
done
cmp "$work/text1/train.txt" "$work/text1/sample.txt" || fail "--sample 1 should put every train document in sample.txt"
grep -q "wordnet: 4 documents, 2 duplicates" "$work/build1.log" || fail "no duplicates found in wordnet: $(cat "$work/build1.log")"
grep -q "debian-handbook: 1 documents, 1 duplicates" "$work/build1.log" || fail "the page differing in case/spacing was kept"

# 2. fetch_corpus.sh: archives (file: urls) verified and unpacked, the same text as building from the
#    trees, tokens per source adding up to the shards, checksums recorded.
run_fetch() {
  "$src/scripts/fetch_corpus.sh" --cache "$work/cache" --out "$work/out" --moe "$moe" --vocab-size 400 \
    --sources "$work/fx/sources.tsv" --checksums "$work/sums" "${split[@]}" "$@"
}
run_fetch --record > "$work/fetch1.log" 2>&1 || { cat "$work/fetch1.log"; fail "fetch_corpus.sh failed"; }
python3 "$build" text --sources "$work/fx/sources.tsv" --root "$work/fx/unpacked" --out "$work/direct" "${split[@]}" 2> /dev/null
for f in train.txt val.txt test.txt sample.txt composition.tsv; do
  cmp "$work/direct/$f" "$work/cache/text/$f" || fail "$f from the archives differs from $f built from the trees"
done
for f in tokenizer.model train.tok val.tok test.tok composition.md; do
  [[ -s $work/out/$f ]] || fail "no $f in the output"
done
[[ $(wc -l < "$work/sums") -eq 9 ]] || fail "expected 9 recorded checksums: $(cat "$work/sums")"
tokens=$(python3 -c "import os,sys; print((os.path.getsize(sys.argv[1]) - 64) // 2)" "$work/out/train.tok")
total=$(awk -F'|' '/\*\*total\*\*/ {gsub(/[ ,]/, "", $7); print $7}' "$work/out/composition.md")
[[ $tokens == "$total" ]] || fail "composition.md says $total train tokens, train.tok holds $tokens"

# 3. A second run reuses the cached archives (the originals are gone) and reproduces every byte.
mv "$work/fx/archives" "$work/fx/archives.gone"
run_fetch > "$work/fetch2.log" 2>&1 || { cat "$work/fetch2.log"; fail "the second run failed"; }
grep -q "9 outputs match" "$work/fetch2.log" || fail "the second run did not check 9 outputs: $(cat "$work/fetch2.log")"
mv "$work/fx/archives.gone" "$work/fx/archives"

# 4. Errors: an archive whose sha256 is not the pinned one; an output that changed; a bad sources line.
sed 's/\t[0-9a-f]\{64\}\tfile:archives\/dict-devil.deb/\t0000000000000000000000000000000000000000000000000000000000000000\tfile:archives\/dict-devil.deb/' \
  "$work/fx/sources.tsv" > "$work/fx/bad.tsv"
if "$src/scripts/fetch_corpus.sh" --cache "$work/cache_bad" --moe none --sources "$work/fx/bad.tsv" --checksums none \
    > "$work/bad.log" 2>&1; then
  fail "a wrong pinned sha256 was accepted"
fi
grep -q "dict-devil 1.0-13.1 (file:archives/dict-devil.deb): sha256 [0-9a-f]* does not match the pinned 0000" "$work/bad.log" \
  || fail "unexpected message: $(cat "$work/bad.log")"
[[ ! -e $work/cache_bad/archives/dict-devil-0000000000000000.deb ]] || fail "the bad archive was kept in the cache"
awk '$2 == "val.txt" {$1 = "1111111111111111111111111111111111111111111111111111111111111111"} {print $1 "  " $2}' \
  "$work/sums" > "$work/sums_bad"
if run_fetch --checksums "$work/sums_bad" > "$work/sums.log" 2>&1; then fail "a changed output was accepted"; fi
grep -q "val.txt: sha256 [0-9a-f]* differs from the recorded 1111" "$work/sums.log" || fail "unexpected message: $(cat "$work/sums.log")"
printf 'sotu\tdir\tpkg\n' > "$work/short.tsv"
if "$src/scripts/fetch_corpus.sh" --cache "$work/cache_short" --sources "$work/short.tsv" > "$work/short.log" 2>&1; then
  fail "a sources line with 3 fields was accepted"
fi
grep -q "the line for 'sotu' does not have 7 tab-separated fields" "$work/short.log" || fail "unexpected message: $(cat "$work/short.log")"
echo "test_corpus: the fixture gives the expected text, the same bytes on every run, and clear errors"
