# Readers for the file formats the corpus packages ship: dictd databases, SWORD zText/zCom
# modules, HTML pages and fortune files. Standard library only; every reader returns plain text.
import gzip
import html.parser
import re
import struct
import zlib

# --- dictd (.index + .dict.dz) -------------------------------------------------------------------

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}


def _dictd_number(text, path):
    value = 0
    for c in text:
        if c not in _B64_VALUE:
            raise ValueError(f"{path}: bad dictd number '{text}'")
        value = value * 64 + _B64_VALUE[c]
    return value


def read_dictd(index_path, dict_path):
    """The entries of a dictd database as (headword, text) in file order. Headwords that share an
    entry (the same offset and length) give it once, under the first headword listed."""
    spans = {}
    with open(index_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 3:
                raise ValueError(f"{index_path}:{line_no}: expected headword, offset and length")
            if fields[0].startswith("00-database") or fields[0].startswith("00database"):
                continue
            span = (_dictd_number(fields[1], index_path), _dictd_number(fields[2], index_path))
            spans.setdefault(span, fields[0])
    with open(dict_path, "rb") as f:
        data = gzip.decompress(f.read()) if dict_path.endswith(".dz") else f.read()
    entries = []
    for (offset, length), headword in sorted(spans.items()):
        if offset + length > len(data):
            raise ValueError(f"{dict_path}: entry '{headword}' runs past the end of the file")
        entries.append((headword, decode_text(data[offset:offset + length])))
    return entries


def decode_text(raw):
    """UTF-8, or Windows-1252 for the few old entries that are not valid UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def text_paragraphs(text):
    """Blocks of text separated by blank lines, each as its list of (unstripped) lines."""
    blocks, current = [], []
    for line in text.split("\n"):
        if line.strip():
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


# --- SWORD zText / zCom modules ------------------------------------------------------------------

def read_sword(module_dir, testament, block_letter, entry_bytes):
    """The entries of one testament of a compressed SWORD module, in versification order, as
    bytes (b"" for an empty entry). block_letter is the file prefix ('b' book, 'c' chapter
    blocks); entry_bytes the size of a verse-index record: 10 (zText, zCom) or 12 (zCom4)."""
    stem = f"{module_dir}/{testament}.{block_letter}z"
    with open(stem + "s", "rb") as f:
        block_index = f.read()
    with open(stem + "v", "rb") as f:
        verse_index = f.read()
    with open(stem + "z", "rb") as f:
        compressed = f.read()
    if len(block_index) % 12 or len(verse_index) % entry_bytes:
        raise ValueError(f"{stem}s/v: index sizes {len(block_index)}, {len(verse_index)} are not whole records")
    blocks = []
    for pos in range(0, len(block_index), 12):
        offset, size, _ = struct.unpack_from("<III", block_index, pos)
        blocks.append(zlib.decompress(compressed[offset:offset + size]))
    entry_format = "<IIH" if entry_bytes == 10 else "<III"
    entries = []
    for pos in range(0, len(verse_index), entry_bytes):
        block, offset, size = struct.unpack_from(entry_format, verse_index, pos)
        if size == 0:
            entries.append((block, offset, b""))
            continue
        if block >= len(blocks) or offset + size > len(blocks[block]):
            raise ValueError(f"{stem}v: entry {pos // entry_bytes} points outside its block")
        entries.append((block, offset, blocks[block][offset:offset + size]))
    return entries


# --- HTML ---------------------------------------------------------------------------------------

_BLOCK_TAGS = {"p", "div", "br", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "blockquote",
               "section", "article", "tr", "hr", "ul", "ol", "dl", "figure", "figcaption", "center"}
_VOID_TAGS = {"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "wbr", "param", "source"}


class _TextParser(html.parser.HTMLParser):
    """Collects the text of an HTML page as lines (one per block element), leaving out the
    elements in skip_tags and every element whose class attribute names one of skip_classes."""

    def __init__(self, skip_tags, skip_classes):
        super().__init__(convert_charrefs=True)
        self.skip_tags = skip_tags
        self.skip_classes = skip_classes
        self.stack = []          # (tag, skipping) of the open elements
        self.skip_depth = 0
        self.lines = []
        self.current = []

    def _flush(self):
        line = " ".join("".join(self.current).split())
        if line:
            self.lines.append(line)
        self.current = []

    def handle_starttag(self, tag, attrs):
        if tag in _VOID_TAGS:
            if tag in _BLOCK_TAGS and not self.skip_depth:
                self._flush()
            return
        classes = set()
        for name, value in attrs:
            if name == "class" and value:
                classes.update(value.split())
        skipping = tag in self.skip_tags or bool(classes & self.skip_classes)
        self.stack.append((tag, skipping))
        if skipping:
            self.skip_depth += 1
        if tag in _BLOCK_TAGS and not self.skip_depth:
            self._flush()

    def handle_endtag(self, tag):
        if tag in _VOID_TAGS or not any(t == tag for t, _ in self.stack):
            return
        while self.stack:  # close everything opened inside it too (HTML allows omitted end tags)
            open_tag, skipping = self.stack.pop()
            if skipping:
                self.skip_depth -= 1
            if open_tag == tag:
                break
        if tag in _BLOCK_TAGS and not self.skip_depth:
            self._flush()

    def handle_data(self, data):
        if not self.skip_depth:
            self.current.append(data)

    def close(self):
        super().close()
        self._flush()


DEFAULT_SKIP_TAGS = frozenset({"head", "script", "style", "pre", "table", "nav", "header", "footer",
                               "svg", "math", "form", "button", "select", "textarea"})


def html_lines(page, skip_tags=DEFAULT_SKIP_TAGS, skip_classes=frozenset()):
    """The visible prose of an HTML page: one line per block element, whitespace collapsed."""
    parser = _TextParser(skip_tags, skip_classes)
    parser.feed(page)
    parser.close()
    return parser.lines


# --- fortune files ------------------------------------------------------------------------------

def read_fortunes(text):
    """The fortunes of a fortune(6) file (separated by lines holding only '%'), each as its lines."""
    fortunes, current = [], []
    for line in text.split("\n"):
        if line.rstrip() == "%":
            if current:
                fortunes.append(current)
            current = []
        else:
            current.append(line)
    if any(line.strip() for line in current):
        fortunes.append(current)
    return [f for f in fortunes if any(line.strip() for line in f)]


# --- GNU info manuals ---------------------------------------------------------------------------

def _info_part(path):
    match = re.search(r"\.info(?:-(\d+))?(?:\.gz)?$", path)
    return int(match.group(1) or 0) if match else 0


_MENU_ENTRY = re.compile(r"^\* (?:Menu:|[^:]+::|[^:]+:\s*[^.]+\.)")
_UNDERLINE = re.compile(r"^\s*[*=.-]+\s*$")  # under a heading
_NOTE_REF = re.compile(r"\*[Nn]ote\s+([^:]+?)::?")


def read_info(paths):
    """The nodes of one info manual (its .info and .info-N files, in part order), each as text
    paragraphs: menus, examples (paragraphs indented by 5 or more spaces), heading underlines and
    node headers dropped, cross references as their plain node names."""
    nodes = []
    for path in sorted(paths, key=_info_part):
        with open(path, "rb") as f:
            raw = f.read()
        text = decode_text(gzip.decompress(raw) if path.endswith(".gz") else raw)
        for chunk in text.split("\x1f")[1:]:
            chunk = chunk.lstrip("\n")
            if not chunk.startswith("File:"):
                continue  # tag tables, indirect tables
            paragraphs = []
            for block in text_paragraphs(chunk.split("\n", 1)[1] if "\n" in chunk else ""):
                if _MENU_ENTRY.match(block[0]) or all(len(line) - len(line.lstrip(" ")) >= 5 for line in block):
                    continue
                block = [line for line in block if not _UNDERLINE.match(line)]
                paragraphs.append(_NOTE_REF.sub(r"\1", join_wrapped(block)))
            nodes.append(paragraphs)
    return nodes


# --- small text helpers -------------------------------------------------------------------------

_TAG = re.compile(r"<[^>]*>")


def strip_tags(markup):
    """Markup (OSIS, ThML) without its tags, entities decoded."""
    return html.unescape(_TAG.sub("", markup))


def join_wrapped(lines):
    """Lines of one wrapped paragraph joined by single spaces."""
    return " ".join(" ".join(line.split()) for line in lines if line.strip())
