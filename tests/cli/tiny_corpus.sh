#!/usr/bin/env bash
# A tiny generated English-like corpus for the CLI tests, paragraphs of four sentences.
# Usage: tiny_corpus.sh FILE LINES
set -euo pipefail
for i in $(seq 1 "$2"); do
  echo "The quick brown fox $i jumps over the lazy dog number $((i % 17)). A bird sang in tree $((i % 5))."
  if ((i % 4 == 0)); then echo; fi
done > "$1"
