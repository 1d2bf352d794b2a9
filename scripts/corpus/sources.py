# One extractor per corpus source: it reads the unpacked package under ROOT/<dir> and returns the
# source's documents, each a list of text lines (markup stripped, in the package's order).
import glob
import json
import os
import re

import formats

# Dictionary-like sources come as many short entries; consecutive entries are grouped into
# documents of at least this many words (an "entry group"), so a document is a readable page.
GROUP_WORDS = 3000


def group_entries(entries, min_words=GROUP_WORDS):
    """Consecutive entries (lists of lines) concatenated into documents of >= min_words words
    (the last one may be shorter)."""
    docs, current, words = [], [], 0
    for lines in entries:
        if not lines:
            continue
        current.extend(lines)
        words += sum(len(line.split()) for line in lines)
        if words >= min_words:
            docs.append(current)
            current, words = [], 0
    if current:
        docs.append(current)
    return docs


def _files(root, pattern):
    found = sorted(glob.glob(os.path.join(root, pattern)))
    if not found:
        raise FileNotFoundError(f"{os.path.join(root, pattern)}: no such files in the unpacked package")
    return found


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# --- npm packages -------------------------------------------------------------------------------

def brown(root):
    """brown.txt as scripts/fetch_brown.sh writes it: one Brown text per blank-line block."""
    return formats.text_paragraphs(_read(_files(root, "brown.txt")[0]))


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def wrap_sentences(text, max_chars=1000):
    """One long line split after sentence ends into lines of at most ~max_chars characters."""
    lines, current = [], ""
    start = 0
    for match in _SENTENCE_END.finditer(text):
        sentence = text[start:match.start()] + match.group(0).rstrip()
        start = match.end()
        if current and len(current) + 1 + len(sentence) > max_chars:
            lines.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    tail = text[start:].strip()
    if tail:
        current = f"{current} {tail}" if current else tail
    if current:
        lines.append(current)
    return lines


def sotu(root):
    """State of the Union addresses, 1790-2018: one document per address (one line each in the
    package, re-wrapped at sentence ends)."""
    return [wrap_sentences(" ".join(_read(path).split())) for path in _files(root, "package/data/*.txt")]


# --- SWORD modules ------------------------------------------------------------------------------

_NOTE = re.compile(r"<note\b.*?</note>", re.S)
_NOTE_GAP = re.compile(r"\x00(?=[\s,.;:!?\u2019\u201d)\]]|$)")
_BREAK = re.compile(r'<div\b[^>]*type="x-p"[^>]*/>|<lb\b[^>]*/>|</?title\b[^>]*>|</?p>|<l\b[^>]*>|'
                    r'</l>|<div\b[^>]*type="(?:paragraph|introduction|section)"[^>]*/?>')


def osis_lines(markup, keep_breaks=True):
    """OSIS markup as text lines: notes dropped, paragraph and title milestones as line breaks."""
    markup = _NOTE.sub("\x00", markup)  # a note between two words stands for a space
    if keep_breaks:
        markup = _BREAK.sub("\n", markup)
    text = formats.strip_tags(markup).replace("\u00b6", " ")
    text = _NOTE_GAP.sub("", text).replace("\x00", " ")
    return [" ".join(line.split()) for line in text.split("\n") if line.strip()]


def _module_dir(root, kind, name):
    return os.path.join(root, "usr/share/sword/modules", kind, name)


def kjv(root):
    """The King James Version (1769 text), one document per chapter, one line per verse."""
    return _bible(_module_dir(root, "texts/ztext", "engKJV2006eb"))


def web(root):
    """The World English Bible (a modern public-domain translation), one document per chapter."""
    return _bible(_module_dir(root, "texts/ztext", "engWEB2015eb"))


def _bible(module):
    """A zText Bible's chapters: a new document starts at a book or chapter marker that follows a
    verse, so a book's titles open its first chapter. Verse lines keep no paragraph breaks."""
    docs, current, has_verse = [], [], False
    for testament in ("ot", "nt"):
        for _, _, raw in formats.read_sword(module, testament, "b", 10):
            markup = raw.decode("utf-8")
            starts = "sID=" in markup and ('type="book"' in markup or "<chapter" in markup)
            if starts and has_verse:
                docs.append(current)
                current, has_verse = [], False
            text = " ".join(osis_lines(markup, keep_breaks=False))
            if text:
                current.append(text)
                has_verse = has_verse or not starts
    if current:
        docs.append(current)
    return docs


def _commentary(root, name, block_letter, entry_bytes):
    """A commentary: its distinct entries (linked verses share one) grouped within each block."""
    module = _module_dir(root, "comments/zcom", name)
    docs = []
    for testament in ("ot", "nt"):
        if not os.path.getsize(f"{module}/{testament}.{block_letter}zs"):
            continue
        seen, by_block = set(), {}
        for block, offset, raw in formats.read_sword(module, testament, block_letter, entry_bytes):
            if not raw or (block, offset) in seen:
                continue
            seen.add((block, offset))
            by_block.setdefault(block, []).append(osis_lines(raw.decode("utf-8")))
        for block in sorted(by_block):
            docs.extend(group_entries(by_block[block]))
    return docs


def mhcc(root):
    """Matthew Henry's Concise Commentary (its conf says zCom4, but the index has 10-byte records)."""
    return _commentary(root, "mhcc", "b", 10)


def tdavid(root):
    """C. H. Spurgeon's Treasury of David (zCom4, one block per psalm)."""
    return _commentary(root, "tdavid", "c", 12)


def scofield(root):
    """The Scofield Reference Notes (1917)."""
    return _commentary(root, "scofield", "b", 10)


# --- dictionaries -------------------------------------------------------------------------------

_GCIDE_SOURCE = re.compile(r"^\[(?:[^\]]*(?:Webster|PJC|WordNet|Century|RDH|AS)[^\]]*)\]$")
# Letters with diacritics are spelled [^e], [=a], [.a] (mark first) or [a^] (breve after).
_GCIDE_LETTER = re.compile(r"\[(?:[\^=.~\"`'-]([A-Za-z]{1,2})|([A-Za-z]{1,2})\^)\]")
_GCIDE_HEAD = re.compile(r"\\[^\\\n]*\\\s*(?:\([^)\n]*[\[\]*\"][^)\n]*\)\s*)?")


def gcide(root):
    """GCIDE (Webster's 1913 and supplements), without the senses taken from WordNet 1.5 (the
    wordnet source has WordNet 3.0), the source tags, the syllable/pronunciation marks of the
    headwords and the ASCII diacritic codes."""
    entries = []
    for _, text in formats.read_dictd(_files(root, "usr/share/dictd/gcide.index")[0],
                                      _files(root, "usr/share/dictd/gcide.dict.dz")[0]):
        lines = []
        for block in formats.text_paragraphs(text):
            marks = [line.strip() for line in block if _GCIDE_SOURCE.match(line.strip())]
            if any("WordNet" in m for m in marks):
                continue
            body = [line for line in block if not _GCIDE_SOURCE.match(line.strip())]
            paragraph = _GCIDE_HEAD.sub("", formats.join_wrapped(body)).replace(" ,", ",")
            paragraph = _GCIDE_LETTER.sub(lambda m: m.group(1) or m.group(2), paragraph)
            paragraph = paragraph.replace("{", "").replace("}", "")
            if paragraph:
                lines.append(paragraph)
        entries.append(lines)
    return group_entries(entries)


def _dictd_source(root, name):
    """A dictd database's entries (paragraphs as lines, wrapped lines joined), grouped."""
    entries = []
    for _, text in formats.read_dictd(_files(root, f"usr/share/dictd/{name}.index")[0],
                                             _files(root, f"usr/share/dictd/{name}.dict.dz")[0]):
        lines = [formats.join_wrapped(block).replace("{", "").replace("}", "")
                 for block in formats.text_paragraphs(text)]
        entries.append(lines)
    return group_entries(entries)


def foldoc(root):
    """The Free On-line Dictionary of Computing."""
    return _dictd_source(root, "foldoc")


def jargon(root):
    """The Jargon File 4.4.7."""
    return _dictd_source(root, "jargon")


def devil(root):
    """Ambrose Bierce, The Devil's Dictionary (1911)."""
    return _dictd_source(root, "devil")


_WORDNET_PARTS = ("noun", "verb", "adj", "adv")


def wordnet(root):
    """WordNet 3.0 synsets as 'word, word: gloss' lines, grouped by lexicographer file."""
    by_lexfile = {}
    for part in _WORDNET_PARTS:
        path = _files(root, f"usr/share/wordnet/data.{part}")[0]
        with open(path, encoding="utf-8", errors="strict") as f:
            for line in f:
                if line.startswith("  "):  # the licence header
                    continue
                head, _, gloss = line.rstrip("\n").partition(" | ")
                fields = head.split(" ")
                num_words = int(fields[3], 16)
                words = [fields[4 + 2 * i].replace("_", " ") for i in range(num_words)]
                words = [re.sub(r"\((?:a|p|ip)\)$", "", w) for w in words]
                gloss = " ".join(gloss.split())
                if gloss:
                    by_lexfile.setdefault((part, int(fields[1])), []).append([f"{', '.join(words)}: {gloss}"])
    docs = []
    for key in sorted(by_lexfile):
        docs.extend(group_entries(by_lexfile[key]))
    return docs


def fortunes(root):
    """fortune(6) cookie files (all but ascii-art), one fortune per line."""
    entries = []
    for path in _files(root, "usr/share/games/fortunes/*"):
        name = os.path.basename(path)
        if "." in name or name == "ascii-art" or os.path.islink(path):
            continue
        for fortune in formats.read_fortunes(_read(path)):
            entries.append([" ".join(" ".join(fortune).split())])
    return group_entries(entries)


# --- GNU info manuals ---------------------------------------------------------------------------

def _info_manuals(root, names):
    """Each named manual's nodes, grouped into documents within the manual."""
    docs = []
    for name in names:
        docs.extend(group_entries(formats.read_info(_files(root, f"usr/share/info/{name}.info*"))))
    return docs


def lilypond_manuals(root):
    """The LilyPond manuals written as prose (not the generated internals or the snippets)."""
    return _info_manuals(root, ("lilypond-learning", "lilypond-notation", "lilypond-usage", "lilypond-essay",
                                "lilypond-extending", "lilypond-contributor", "lilypond-web"))


def guile_manual(root):
    """The GNU Guile 3.0 reference manual."""
    return _info_manuals(root, ("guile-3.0/guile",))


def r_manuals(root):
    """The R manuals (introduction, language definition, FAQ, data import, administration,
    extensions, internals)."""
    return _info_manuals(root, ("R-intro", "R-lang", "R-FAQ", "R-data", "R-admin", "R-exts", "R-ints"))


def gnu_standards(root):
    """The GNU Coding Standards and the GNU maintainers' guide."""
    return _info_manuals(root, ("standards", "maintain"))


def maxima_manual(root):
    """The Maxima computer algebra system manual."""
    return _info_manuals(root, ("maxima",))


# --- HTML documentation -------------------------------------------------------------------------

_SKIP_CLASSES = frozenset({"navheader", "navfooter", "docnav", "toc", "screen", "programlisting",
                           "synopsis", "highlight", "sphinxsidebar", "related", "footer", "header",
                           "nav-panel", "navigation", "breadcrumb", "example", "informalexample", "section-toc",
                           "mini-toc", "copiable-anchor", "copiable-link", "contents", "shortcontents",
                           "cmdsynopsis", "funcsynopsis", "literallayout", "mediaobject"})


def _html_pages(root, pattern, exclude=()):
    docs = []
    for path in _files(root, pattern):
        if os.path.basename(path) in exclude or not os.path.isfile(path):
            continue
        docs.append(formats.html_lines(_read(path), skip_classes=_SKIP_CLASSES))
    return docs


def anarchism(root):
    """An Anarchist FAQ (version 15), one document per HTML section page."""
    return _html_pages(root, "usr/share/doc/anarchism/html/*.html")


def debian_handbook(root):
    """The Debian Administrator's Handbook (English), one document per page."""
    return _html_pages(root, "usr/share/doc/debian-handbook/html/en-US/*.html", exclude=("index.html",))


def debian_reference(root):
    """Debian Reference (English), one document per chapter."""
    return _html_pages(root, "usr/share/debian-reference/*.en.html", exclude=("index.en.html",))


def developers_reference(root):
    """Debian Developer's Reference, one document per chapter."""
    return _html_pages(root, "usr/share/developers-reference/*.html",
                       exclude=("index.html", "genindex.html", "search.html", "developers-reference.html"))


def debian_policy(root):
    """The Debian Policy Manual, one document per chapter or appendix."""
    return _html_pages(root, "usr/share/doc/debian-policy/policy.html/*.html",
                       exclude=("index.html", "genindex.html", "search.html"))


def octave_manual(root):
    """The GNU Octave manual, one document per page."""
    return _html_pages(root, "usr/share/doc/octave/octave.html/*.html", exclude=("index.html",))


def gimp_manual(root):
    """The GIMP user manual (English), one document per page."""
    return _html_pages(root, "usr/share/gimp/2.0/help/en/*.html", exclude=("index.html",))


def gap_manuals(root):
    """The GAP 4 manuals (tutorial, reference, HPC-GAP), one document per chapter page."""
    pages = [p for p in _files(root, "usr/share/gap/doc/*/chap*.html") if not p.endswith("_mj.html")]
    return [formats.html_lines(_read(path), skip_classes=_SKIP_CLASSES) for path in pages]


# name -> (extractor, description); the corpus keeps this order.
EXTRACTORS = {
    "brown": (brown, "Brown corpus (1961 American English, 500 texts)"),
    "sotu": (sotu, "State of the Union addresses 1790-2018"),
    "kjv": (kjv, "King James Bible"),
    "web": (web, "World English Bible"),
    "mhcc": (mhcc, "Matthew Henry's Concise Commentary"),
    "tdavid": (tdavid, "Spurgeon, The Treasury of David"),
    "scofield": (scofield, "Scofield Reference Notes (1917)"),
    "gcide": (gcide, "GCIDE: Webster's Revised Unabridged (1913) and supplements"),
    "wordnet": (wordnet, "WordNet 3.0 glosses"),
    "foldoc": (foldoc, "Free On-line Dictionary of Computing"),
    "jargon": (jargon, "The Jargon File 4.4.7"),
    "devil": (devil, "Bierce, The Devil's Dictionary"),
    "fortunes": (fortunes, "fortune(6) cookies"),
    "anarchism": (anarchism, "An Anarchist FAQ"),
    "debian-handbook": (debian_handbook, "The Debian Administrator's Handbook"),
    "debian-reference": (debian_reference, "Debian Reference"),
    "developers-reference": (developers_reference, "Debian Developer's Reference"),
    "debian-policy": (debian_policy, "Debian Policy Manual"),
    "octave": (octave_manual, "GNU Octave manual"),
    "gimp": (gimp_manual, "GIMP user manual"),
    "lilypond": (lilypond_manuals, "LilyPond manuals"),
    "guile": (guile_manual, "GNU Guile reference manual"),
    "r-manuals": (r_manuals, "R manuals"),
    "gnu-standards": (gnu_standards, "GNU Coding Standards"),
    "maxima": (maxima_manual, "Maxima manual"),
    "gap": (gap_manuals, "GAP manuals"),
}
