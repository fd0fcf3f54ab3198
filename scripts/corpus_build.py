#!/usr/bin/env python3
"""Gathers real text that Debian packages ship into one jsonl corpus for `crossmoe data prepare`.

Each source is read from where its package installs it, cleaned of markup and code (code is not
the language we want the models to learn here), and cut into documents: a page, a manual node, a
chapter, or a run of short entries. Paragraphs seen before anywhere in the corpus are dropped
(licence boilerplate, navigation, repeated notes), and so are documents left too short.

    python3 scripts/corpus_build.py OUT.jsonl      # one {"text", "source"} per line; the mix on stderr

Installed by scripts/corpus.sh (which names the packages); the output depends only on the
installed files, read in sorted order, so two runs give the same bytes.
"""
import glob
import gzip
import hashlib
import html.parser
import json
import os
import re
import subprocess
import sys

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

    BLOCKS = {"p", "li", "dd", "dt", "h1", "h2", "h3", "h4", "td", "blockquote"}
    SKIP = {"pre", "script", "style", "code", "kbd", "samp", "head"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs, self.current, self.skip, self.nav = [], [], 0, 0

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class") or ""
        if tag in self.SKIP:
            self.skip += 1
        elif tag == "div" and ("navheader" in cls or "navfooter" in cls or "toc" in cls):
            self.nav += 1
        elif tag in self.BLOCKS:
            self.flush()

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
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

def source_files(pattern, clean, exclude=None):
    def read():
        for path in sorted(glob.glob(pattern, recursive=True)):
            if exclude and re.search(exclude, path):
                continue
            yield os.path.relpath(path, "/usr/share"), clean(read_text(path))
    return read


def source_info():
    for path in sorted(glob.glob("/usr/share/info/*.info.gz")):  # split manuals' parts (-1.gz ...) join their first file
        text = read_text(path)
        part = 1
        while os.path.exists(path[:-3] + "-%d.gz" % part):
            text += read_text(path[:-3] + "-%d.gz" % part)
            part += 1
        for i, node in enumerate(info_nodes(text)):
            yield "%s#%d" % (os.path.basename(path), i), node


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


def source_fortunes(chinese):
    def read():
        for path in sorted(glob.glob("/usr/share/games/fortunes/*")):
            name = os.path.basename(path)
            if "." in name or os.path.isdir(path) or name in FORTUNES_NOT_PROSE or (name in FORTUNES_ZH) != chinese:
                continue
            text = re.sub(r"\x1b\[[0-9;]*m", "", read_text(path))  # colour escapes in fortunes-zh
            joiner = "" if chinese else " "  # Chinese lines join without a space
            items = [joiner.join(t.split()) for t in text.split("\n%\n") if t.strip()]
            for i, group in enumerate(chunks(items, 40)):
                yield "fortunes/%s#%d" % (name, i), group
    return read


SOURCES = [  # name, language, documents
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
    ("gnu-info", "en", source_info),
    ("gcide", "en", source_gcide),
    ("wordnet", "en", source_wordnet),
    ("kjv-bible", "en", source_kjv),
    ("fortunes", "en", source_fortunes(chinese=False)),
    ("fortunes-zh", "zh", source_fortunes(chinese=True)),
]


def long_enough(text, language):
    if language == "zh":
        return len(re.findall(r"[\u4e00-\u9fff]", text)) >= MIN_HAN_CHARS
    return len(text.split()) >= MIN_WORDS


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: corpus_build.py OUT.jsonl")
    out_path = sys.argv[1]
    seen = set()
    mix = []
    with open(out_path + ".tmp", "w", encoding="utf-8") as out:
        for name, language, read in SOURCES:
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
            mix.append((name, language, documents, words, chars, duplicates))
            print("%-16s %s %7d documents %11d words %12d characters (%d repeated paragraphs dropped)"
                  % mix[-1], file=sys.stderr)
    os.replace(out_path + ".tmp", out_path)
    total = [sum(m[i] for m in mix) for i in (2, 3, 4)]
    print("%-16s    %7d documents %11d words %12d characters" % ("total", *total), file=sys.stderr)


if __name__ == "__main__":
    main()
