"""GOT's formatted output (`--ocr_type format`: Mathpix-style Markdown with LaTeX) as Markdown or as one
self-contained HTML page.

    markdown = to_markdown(result.text)            # GFM: pipe tables, or HTML tables where cells span
    page = to_html(result.text, image="scan.png")  # the page image beside the rendered text
    document = to_html([text1, text2], [image1, image2])  # a section per page

LaTeX `tabular`s become tables, `\\title` / `\\section` / `\\subsection` headings, `\\textbf` / `\\textit` /
`\\underline` emphasis, `itemize` / `enumerate` lists; math stays math (`$...$` / `$$...$$` in Markdown, MathML in
HTML, which browsers draw natively); other commands are kept as text. Model output is untrusted: in HTML all of it is
escaped, and the page's Content-Security-Policy forbids scripts and network loads. A table or formula that cannot be
rendered is shown as its source in a marked box instead of failing the page. Plain text (`ocr_type="ocr"`) is never
parsed: it is shown as it was read.
"""

import base64
import html
import io
import os
import re
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union
from xml.etree.ElementTree import Element

from latex2mathml.converter import convert_to_element
from markdown_it import MarkdownIt

from .constants import FORMATTED
from .errors import GOTError, reason
from .logger import logger

DEFAULT_TITLE = "GOT-OCR result"
PDF_DPI = 100  # PDF pages shown beside their text
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

# Math and underlines are cut out of the text as private-use placeholders (which are removed from the input first),
# so that neither Markdown parsing nor table splitting ever sees inside a formula.
_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")
_PRIVATE_USE = re.compile("[\ue000-\ue003]")
_UNDERLINE_MARKDOWN = ("<u>", "</u>")
_UNDERLINE_PLACEHOLDERS = ("\ue002", "\ue003")

_IN_FORMULA = r"(?:(?!\n[ \t]*\n|\\[(\[]).)"  # any character, but no blank line and no new \( or \[
_MATH = re.compile(
    r"(?P<escaped>\\[\\$])"
    rf"|\\\[(?P<display>{_IN_FORMULA}*?)\\\]"
    rf"|\$\$(?P<display_dollar>{_IN_FORMULA}+?)\$\$"
    rf"|\\\((?P<inline>{_IN_FORMULA}*?)\\\)"
    r"|(?<!\$)\$(?P<inline_dollar>[^\s$](?:[^$\n]*?[^\s$\\])?)\$(?!\d)"
    r"|(?P<broken>(?:\\[(\[]|\$\$).*?(?=\s*(?:\\[(\[]|\n|\Z)))",  # an opening never closed
    re.S,
)
# A tabular ends at \end{tabular}; one never closed (GOT ran out of tokens) at the next blank line.
_TABULAR = re.compile(r"\\begin\{tabular\}((?:(?!\n[ \t]*\n).)*?)(\\end\{tabular\}|(?=\n[ \t]*\n)|\Z)", re.S)
_TABLE_TOKEN = re.compile(r"\\\\|\\.?|[{}&]|[^\\{}&]+", re.S)
# What may open a row before its first cell: rules, and the [2pt] of a `\\[2pt]` that ended the row before.
_LEADING_RULES = re.compile(
    r"^(?:\s*(?:\\(?:hline|toprule|midrule|bottomrule)\b"
    r"|\\(?:cline|cmidrule|hhline)(?:\([^)]*\))?\{[^}]*\}"
    r"|\[\s*-?[\d.]+\s*(?:pt|em|ex|mm|cm|in|bp)\s*\]))*"
)
_OPTIONS = re.compile(r"\s*(?:\[[^\]]*\]\s*)?")
_COMMAND = re.compile(r"\\(title|section|subsection|subsubsection|textbf|textit|emph|underline)\*?\s*(?=\{)")
_HEADING_LEVELS = {"title": 1, "section": 2, "subsection": 3, "subsubsection": 4}
_LIST = re.compile(
    r"\\begin\{(?P<begin>itemize|enumerate)\}(?:\s*\[[^\]]*\])?"
    r"|\\end\{(?P<end>itemize|enumerate)\}"
    r"|\\item(?![a-zA-Z])(?:\s*\[(?P<label>[^\]]*)\])?"
)
_GFM_ALIGN = {"l": "---", "c": ":---:", "r": "---:"}
_HTML_ALIGN = {"c": "center", "r": "right"}
_HTML_START = re.compile(r"<(?=[A-Za-z/!?])")
_HTML_TAG_IN_MATH = re.compile(r"<(?=[A-Za-z/!?][^<]*>)")
_ALIGNED = re.compile(r"\\(begin|end)\{aligned\}")

_MATHML_TAGS = frozenset(
    "math mrow mi mn mo ms mtext mspace msub msup msubsup mfrac msqrt mroot munder mover munderover mtable mtr mtd "
    "mstyle mpadded mphantom menclose merror mmultiscripts mprescripts none".split()
)
_MATHML_ATTRIBUTES = frozenset(
    "display mathvariant mathsize mathcolor mathbackground stretchy fence form separator largeop movablelimits "
    "accent accentunder lspace rspace minsize maxsize symmetric linethickness displaystyle scriptlevel columnalign "
    "columnlines columnspacing rowalign rowlines rowspacing frame framespacing width height depth voffset linebreak "
    "notation".split()
)

_IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
)

_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"]).disable("image")

_STYLE = """
:root { color-scheme: light; --line: #9aa4b1; }
body { margin: 0; background: #f4f5f7; color: #1d2330; line-height: 1.55;
       font-family: system-ui, "Noto Sans", "Noto Sans CJK SC", "Noto Sans CJK", sans-serif; }
main { max-width: 1500px; margin: 0 auto; padding: 1.5rem; }
.page { display: grid; gap: 1.5rem; margin-bottom: 2rem; }
.page.with-image { grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); }
@media (max-width: 900px) { .page.with-image { grid-template-columns: minmax(0, 1fr); } }
.scan { margin: 0; }
.scan img { display: block; width: 100%; height: auto; border: 1px solid var(--line); background: #fff; }
.scan img + img { margin-top: .75rem; }
.text { background: #fff; border: 1px solid var(--line); padding: 1rem 1.5rem; overflow-x: auto; }
h1, h2, h3, h4 { line-height: 1.25; margin: 1em 0 .5em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid var(--line); padding: .3em .6em; vertical-align: top; }
th { background: #eef1f5; text-align: left; }
math { font-size: 1.1em; }
math[display="block"] { margin: .8em 0; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .9em; }
.render-error { border: 1px dashed #b3261e; background: #fdf0ef; color: #6b1510; white-space: pre-wrap; }
pre.render-error { padding: .6em; }
pre.plain { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; font: inherit; }
pre.render-error::before { content: attr(title); display: block; font: bold .85em system-ui, sans-serif; }
"""


class _Unrenderable(ValueError):
    """A table or formula that cannot be rendered; the message says why."""


@dataclass
class _Math:
    """A formula cut out of the text: its LaTeX, whether it is display math, and its source with delimiters."""

    latex: str
    display: bool
    source: str
    broken: bool = False


@dataclass
class _Cell:
    """One table cell: its text (with math placeholders), its spans, and its alignment ('l', 'c' or 'r')."""

    text: str
    colspan: int = 1
    rowspan: int = 1
    align: str = "l"


@dataclass
class _Table:
    """A parsed tabular: rows of the cells that are drawn, and each column's alignment."""

    rows: List[List[_Cell]]
    aligns: List[str]

    def is_grid(self) -> bool:
        """True when no cell spans rows or columns (so a GFM pipe table can hold it)."""
        return all(cell.colspan == cell.rowspan == 1 for row in self.rows for cell in row)


@dataclass
class _Broken:
    """A table that could not be parsed: its source (with math placeholders) and the reason."""

    source: str
    reason: str


def _extract_math(text: str):
    """`(text, formulas)`: the text with each formula replaced by a placeholder naming its index in `formulas`."""
    formulas = []

    def cut(match):
        kind = match.lastgroup
        if kind == "escaped":
            return match.group(0)
        formulas.append(_Math(match.group(kind).strip(), kind.startswith("display"), match.group(0), kind == "broken"))
        return f"\ue000{len(formulas) - 1}\ue001"

    return _MATH.sub(cut, _PRIVATE_USE.sub("", text.replace("\r\n", "\n"))), formulas


def _fill(text: str, formulas: Sequence[_Math], render: Callable[[_Math], str]) -> str:
    """`text` with every math placeholder replaced by `render(formula)`."""
    return _PLACEHOLDER.sub(lambda match: render(formulas[int(match.group(1))]), text)


def _read_group(text: str, start: int):
    """`(content, end)` of the brace group opening at `text[start]`, or None if there is none or it never closes."""
    if start >= len(text) or text[start] != "{":
        return None
    depth, index = 0, start
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 1
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : index], index + 1
        index += 1
    return None


def _commands_to_markdown(text: str, underline=_UNDERLINE_MARKDOWN) -> str:
    """`text` with sectioning and emphasis commands as Markdown (`underline` wraps \\underline); others kept."""
    pieces, position = [], 0
    while match := _COMMAND.search(text, position):
        group = _read_group(text, match.end())
        if group is None:
            pieces.append(text[position : match.end()])
            position = match.end()
            continue
        inner = _commands_to_markdown(group[0], underline)
        pieces.append(text[position : match.start()] + _format_command(match.group(1), inner, underline))
        position = group[1]
    pieces.append(text[position:])
    return re.sub(r"\n{3,}", "\n\n", "".join(pieces))


def _list_marker(kind: str, number: int) -> str:
    """The Markdown marker of item `number` of an itemize (a bullet) or enumerate (its number)."""
    return "- " if kind == "itemize" else f"{number}. "


def _lists_to_markdown(text: str) -> str:
    """`text` with `itemize` / `enumerate` environments as Markdown lists, nested ones indented under their item
    (a list never closed ends with the text, as when GOT runs out of tokens); `text` itself when they do not nest."""
    pieces, open_lists, position = [], [], 0  # open_lists: [kind, items so far] from the outermost
    for match in _LIST.finditer(text):
        between = text[position : match.start()]
        pieces.append(" ".join(between.split()) if open_lists else between)
        position = match.end()
        if match.group("begin"):
            open_lists.append([match.group("begin"), 0])
            pieces.append("" if len(open_lists) > 1 else "\n\n")
        elif match.group("end"):
            if not open_lists or open_lists.pop()[0] != match.group("end"):
                return text
            pieces.append("" if open_lists else "\n\n")
        elif not open_lists:
            return text
        else:
            indent = "".join(" " * len(_list_marker(*outer)) for outer in open_lists[:-1])
            open_lists[-1][1] += 1
            label = (match.group("label") or "").strip()
            pieces.append(f"\n{indent}{_list_marker(*open_lists[-1])}" + (f"**{label}** " if label else ""))
    rest = text[position:]
    return "".join(pieces) + (" ".join(rest.split()) if open_lists else rest)


def _format_command(name: str, inner: str, underline) -> str:
    """One converted command: a heading on its own lines, or `inner` wrapped in emphasis markers."""
    if name in _HEADING_LEVELS:
        return f"\n\n{'#' * _HEADING_LEVELS[name]} {' '.join(inner.split())}\n\n"
    opening, closing = {"textbf": ("**", "**"), "underline": underline}.get(name, ("*", "*"))
    core = inner.strip()
    if not core:
        return inner
    lead, trail = inner[: len(inner) - len(inner.lstrip())], inner[len(inner.rstrip()) :]
    return f"{lead}{opening}{core}{closing}{trail}"


def _escape_raw_html(text: str) -> str:
    """`text` with each `<` that could open raw HTML backslash-escaped, so that Markdown renderers show it as text."""
    return _HTML_START.sub(r"\\<", text)


def _blocks(text: str) -> list:
    """The text cut into prose (str), tables (_Table) and tables that cannot be parsed (_Broken), in order."""
    blocks, position = [], 0
    for match in _TABULAR.finditer(text):
        blocks.append(text[position : match.start()])
        try:
            if not match.group(2):
                raise _Unrenderable("it has no \\end{tabular}")
            blocks.append(_parse_tabular(match.group(1)))
        except _Unrenderable as err:
            blocks.append(_Broken(match.group(0), f"could not render this table: {err}"))
        position = match.end()
    blocks.append(text[position:])
    return [block for block in blocks if not isinstance(block, str) or block.strip()]


def _column_aligns(spec: str) -> List[str]:
    """'l', 'c' or 'r' for each column of a tabular column spec (p/m/b/X columns are left-aligned)."""
    spec = re.sub(r"\*\{(\d+)\}\{([^{}]*)\}", lambda m: m.group(2) * int(m.group(1)), spec)
    spec = re.sub(r"[@<>!]\{[^{}]*\}|\{[^{}]*\}", "", spec)
    return ["l" if char in "pmbX" else char for char in spec if char in "lcrpmbX"]


def _split_rows(body: str) -> List[List[str]]:
    """The cells of each row of a tabular body, split at `\\\\` and `&` outside braces."""
    rows, cells, cell, depth = [], [], [], 0
    for token in _TABLE_TOKEN.findall(body):
        depth += {"{": 1, "}": -1}.get(token, 0)
        if depth < 0:
            raise _Unrenderable("a } closes nothing")
        if depth == 0 and token == "\\\\":
            rows.append(cells + ["".join(cell)])
            cells, cell = [], []
        elif depth == 0 and token == "&":
            cells.append("".join(cell))
            cell = []
        else:
            cell.append(token)
    if depth:
        raise _Unrenderable("a { is never closed")
    rows.append(cells + ["".join(cell)])
    rows = [[_LEADING_RULES.sub("", row[0], count=1)] + row[1:] for row in rows]
    return [row for row in rows if len(row) > 1 or row[0].strip()]


def _span_command(text: str, name: str):
    """`(count, second argument, rest)` when `text` starts with `\\name{count}{..}{..}` ([..] options and the bare
    `*` width of \\multirow allowed; rest is the third argument and anything after it), else None."""
    match = re.match(rf"\\{name}(?![a-zA-Z])", text)
    if not match:
        return None
    arguments, position = [], match.end()
    for index in range(3):
        position = _OPTIONS.match(text, position).end()
        if index == 1 and text.startswith("*", position):
            arguments.append("*")
            position += 1
            continue
        group = _read_group(text, position)
        if group is None:
            raise _Unrenderable(f"\\{name} needs three arguments")
        arguments.append(group[0])
        position = group[1]
    if not arguments[0].strip().isdigit() or int(arguments[0]) < 1:
        raise _Unrenderable(f"\\{name}{{{arguments[0]}}} does not span a whole number of cells")
    return int(arguments[0]), arguments[1], arguments[2] + text[position:]


def _parse_cell(source: str) -> _Cell:
    """One tabular cell: its text, and its spans from \\multicolumn and \\multirow (in either nesting)."""
    cell = _Cell(source.strip())
    while True:
        if spanned := _span_command(cell.text, "multicolumn"):
            cell.colspan, spec, cell.text = spanned
            cell.align = (_column_aligns(spec) or ["l"])[0]
        elif spanned := _span_command(cell.text, "multirow"):
            cell.rowspan, _, cell.text = spanned
        else:
            return cell
        cell.text = cell.text.strip()


def _parse_tabular(body: str) -> _Table:
    """A tabular environment (what follows `\\begin{tabular}`) as a table."""
    spec = _read_group(body, len(body) - len(body.lstrip()))
    if spec is None:
        raise _Unrenderable("its column spec is missing")
    if "\\begin{tabular}" in body:
        raise _Unrenderable("a table inside a table is not supported")
    rows = [[_parse_cell(cell) for cell in row] for row in _split_rows(body[spec[1] :])]
    if not rows:
        raise _Unrenderable("it has no rows")
    aligns = _column_aligns(spec[0]) or ["l"] * max(sum(cell.colspan for cell in row) for row in rows)
    return _Table(_lay_out(rows, aligns), aligns)


def _lay_out(rows: List[List[_Cell]], aligns: List[str]) -> List[List[_Cell]]:
    """The cells drawn in each row: those that LaTeX leaves empty under a \\multirow dropped, short rows padded,
    each cell given its column's alignment; _Unrenderable for a row wider than the table."""
    remaining = [0] * len(aligns)  # rows still covered by a \multirow, per column
    laid_out = []
    for number, row in enumerate(rows, 1):
        covered = [count > 0 for count in remaining]
        remaining = [max(count - 1, 0) for count in remaining]
        kept, column = [], 0
        for cell in row:
            while column < len(aligns) and covered[column] and cell.text:
                column += 1  # the empty cell under a \multirow left out, as in HTML
            if column < len(aligns) and not covered[column]:
                cell.align = cell.align if cell.colspan > 1 else aligns[column]
                kept.append(cell)
                for spanned in range(column, min(column + cell.colspan, len(aligns))):
                    remaining[spanned] = cell.rowspan - 1
            column += cell.colspan
        if column > len(aligns):
            raise _Unrenderable(f"row {number} has {column} columns but the table has {len(aligns)}")
        laid_out.append(kept + [_Cell("", align=aligns[c]) for c in range(column, len(aligns)) if not covered[c]])
    return laid_out


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall("`+", text)), default=0)


def _code_span(text: str) -> str:
    """`text` as a Markdown code span, with a backtick fence longer than any run of backticks inside."""
    ticks = "`" * (_longest_backtick_run(text) + 1)
    return f"{ticks} {text} {ticks}"


def _fenced(text: str, info: str = "latex") -> str:
    """`text` as a fenced Markdown code block tagged `info`."""
    fence = "`" * max(3, _longest_backtick_run(text) + 1)
    return f"{fence}{info}\n{text.strip(chr(10))}\n{fence}"


def _math_markdown(formula: _Math) -> str:
    """A formula as Markdown math (`$...$` or `$$...$$`), a `<` that would open an HTML tag written `\\lt`; an
    unclosed formula as a code span of its source."""
    if formula.broken:
        return _code_span(formula.source)
    latex = _HTML_TAG_IN_MATH.sub(r"\\lt ", formula.latex)
    return f"$${latex}$$" if formula.display else f"${latex}$"


def _mathml_text(text: Optional[str]) -> str:
    """Text from the converter's tree, escaped for HTML (the converter stores entities as literal text)."""
    return html.escape(html.unescape(text or ""), quote=False)


def _serialize_mathml(element: Element) -> str:
    """MathML from the converter's tree: known elements and attributes only, every text and value escaped."""
    if element.tag not in _MATHML_TAGS:
        raise _Unrenderable(f"the converter made an unexpected <{element.tag}>")
    attributes = "".join(
        f' {name}="{html.escape(value)}"' for name, value in element.attrib.items() if name in _MATHML_ATTRIBUTES
    )
    inner = _mathml_text(element.text) + "".join(
        _serialize_mathml(child) + _mathml_text(child.tail) for child in element
    )
    return f"<{element.tag}{attributes}>{inner}</{element.tag}>"


def _mathml(formula: _Math) -> str:
    """A formula as MathML; _Unrenderable when it is never closed or the converter rejects it."""
    if formula.broken:
        raise _Unrenderable("it is never closed")
    try:
        # latex2mathml lays out `split` (the same as `aligned`, which it does not know) as a table
        latex = _ALIGNED.sub(r"\\\1{split}", formula.latex)
        tree = convert_to_element(latex, display="block" if formula.display else "inline")
    except Exception as err:  # latex2mathml raises many exception types (IndexError too) on malformed LaTeX
        raise _Unrenderable(f"the LaTeX converter failed ({type(err).__name__})") from err
    return _serialize_mathml(tree)


def _math_html(formula: _Math) -> str:
    """A formula as MathML, or its escaped source in a marked <code> when it cannot be converted."""
    try:
        return _mathml(formula)
    except _Unrenderable as err:
        return _error_html("code", f"could not render this formula: {err}", formula.source)


def _math_in_pipe_table(formula: _Math) -> str:
    """A formula as Markdown math in a pipe-table row: its `|` escaped, so that the row is not split there."""
    return _math_markdown(formula).replace("|", "\\|")


def _pipe_table_lines(markdown: str) -> set:
    """The numbers (0-based) of the lines of `markdown` that are rows of GFM pipe tables."""
    return {line for token in _MARKDOWN.parse(markdown) if token.type == "table_open" for line in range(*token.map)}


def _fill_markdown(markdown: str, formulas: Sequence[_Math]) -> str:
    """Markdown prose with its formulas as Markdown math (with `|` escaped in the rows of pipe tables)."""
    table_lines = _pipe_table_lines(markdown)
    return "\n".join(
        _fill(line, formulas, _math_in_pipe_table if number in table_lines else _math_markdown)
        for number, line in enumerate(markdown.split("\n"))
    )


def _math_source(formula: _Math) -> str:
    """A formula's source, delimiters included."""
    return formula.source


def _math_source_html(formula: _Math) -> str:
    """A formula as escaped Markdown math source (for HTML tables inside Markdown)."""
    return html.escape(_math_markdown(formula))


def _error_html(tag: str, title: str, source: str) -> str:
    """Escaped source in a visibly marked element whose title says what went wrong."""
    return f'<{tag} class="render-error" title="{html.escape(title)}">{html.escape(source)}</{tag}>'


def _fill_html(rendered: str, formulas: Sequence[_Math], render: Callable[[_Math], str]) -> str:
    """Rendered HTML with the math and underline placeholders filled in, in text only (never inside a tag)."""
    pieces = re.split(r"(<[^>]*>)", rendered)
    opening, closing = _UNDERLINE_PLACEHOLDERS
    return "".join(
        piece
        if piece.startswith("<")
        else _fill(piece, formulas, render).replace(opening, "<u>").replace(closing, "</u>")
        for piece in pieces
    )


def _inline_html(text: str, formulas: Sequence[_Math], render: Callable[[_Math], str]) -> str:
    """A table cell's text as inline HTML (Markdown emphasis and links, math through `render`)."""
    markdown = " ".join(_commands_to_markdown(text, _UNDERLINE_PLACEHOLDERS).split())
    return _fill_html(_MARKDOWN.renderInline(markdown), formulas, render)


def _table_html(table: _Table, cell_html: Callable[[str], str]) -> str:
    """A <table> (first row as header cells) with colspan/rowspan; `cell_html` renders each cell's text."""
    lines = ["<table>"]
    for number, row in enumerate(table.rows):
        tag = "th" if number == 0 else "td"
        cells = []
        for cell in row:
            attributes = "".join(
                f' {name}="{value}"'
                for name, value in (("colspan", cell.colspan), ("rowspan", cell.rowspan))
                if value > 1
            )
            if cell.align in _HTML_ALIGN:
                attributes += f' style="text-align: {_HTML_ALIGN[cell.align]}"'
            cells.append(f"<{tag}{attributes}>{cell_html(cell.text)}</{tag}>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(lines + ["</table>"])


def _gfm_table(table: _Table, formulas: Sequence[_Math]) -> str:
    """A GFM pipe table (first row as header) whose cells have their `|` escaped."""

    def cell_text(cell):
        markdown = " ".join(_commands_to_markdown(_escape_raw_html(cell.text)).split())
        return _fill(markdown.replace("|", "\\|"), formulas, _math_in_pipe_table)

    lines = ["| " + " | ".join(cell_text(cell) for cell in row) + " |" for row in table.rows]
    lines.insert(1, "| " + " | ".join(_GFM_ALIGN[align] for align in table.aligns) + " |")
    return "\n".join(lines)


def _page_numbers(numbers: Optional[Sequence[Optional[int]]], count: int) -> List[int]:
    """The number of each of `count` pages: those given (a None, or no list, numbers a page by its place)."""
    numbers = list(numbers) if numbers is not None else [None] * count
    if len(numbers) != count:
        raise GOTError(f"There are {len(numbers)} page numbers for {count} pages.")
    return [number or place for place, number in enumerate(numbers, 1)]


def _page_markdown(text: str, ocr_type: str) -> str:
    """One page as Markdown: formatted text rendered (see `to_markdown`), plain text as read in a fenced block."""
    if ocr_type != FORMATTED:
        return _fenced(text, "text")
    prose, formulas = _extract_math(text)
    parts = []
    for block in _blocks(prose):
        if isinstance(block, str):
            markdown = _commands_to_markdown(_lists_to_markdown(_escape_raw_html(block)))
            parts.append(_fill_markdown(markdown, formulas).strip("\n"))
        elif isinstance(block, _Broken):
            parts.append(_fenced(_fill(block.source, formulas, _math_source)))
        elif block.is_grid():
            parts.append(_gfm_table(block, formulas))
        else:
            parts.append(_table_html(block, lambda cell: _inline_html(cell, formulas, _math_source_html)))
    return "\n\n".join(part for part in parts if part.strip())


def to_markdown(
    text: Union[str, Sequence[str]],
    ocr_type: str = FORMATTED,
    page_numbers: Optional[Sequence[Optional[int]]] = None,
) -> str:
    """GOT's text as CommonMark/GFM.

    Formatted text (`ocr_type` "format"): pipe tables where cells do not span (HTML tables where they do), headings,
    emphasis, lists, `$...$` / `$$...$$` math; a table that cannot be parsed stays as its source in a code block, and
    raw HTML in the text is escaped, so that it shows as text wherever the Markdown is rendered. Plain text (any other
    `ocr_type`) is shown as it was read, in a fenced `text` block. Several pages (`text` a list) follow each other in
    order, each opened by a `<!-- page N -->` comment (N from `page_numbers`) and parted from the one before by a rule.
    """
    if isinstance(text, str):
        return _page_markdown(text, ocr_type)
    pages = list(text)
    numbers = _page_numbers(page_numbers, len(pages))
    if len(pages) == 1:
        return _page_markdown(pages[0], ocr_type)
    return "\n\n---\n\n".join(
        f"<!-- page {number} -->\n\n{_page_markdown(page, ocr_type)}" for page, number in zip(pages, numbers)
    )


def _text_html(text: str) -> str:
    """One page of GOT's formatted text as HTML: Markdown rendered, tables and MathML built here, all escaped."""
    prose, formulas = _extract_math(text)
    parts = []
    for block in _blocks(prose):
        if isinstance(block, str):
            markdown = _commands_to_markdown(_lists_to_markdown(block), _UNDERLINE_PLACEHOLDERS)
            parts.append(_fill_html(_MARKDOWN.render(markdown), formulas, _math_html))
        elif isinstance(block, _Broken):
            parts.append(_error_html("pre", block.reason, _fill(block.source, formulas, _math_source)))
        else:
            parts.append(_table_html(block, lambda cell: _inline_html(cell, formulas, _math_html)))
    return "\n".join(parts)


def _image_mime(data: bytes) -> Optional[str]:
    """The MIME type of image bytes a browser shows as they are, from their signature; None for other formats."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for signature, mime in _IMAGE_SIGNATURES if data.startswith(signature)), None)


def _png_bytes(image) -> bytes:
    """A PIL image encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _image_data_url(image) -> str:
    """A `data:` URL for a PIL image, image bytes or an image file; formats browsers lack (TIFF...) become PNG."""
    if hasattr(image, "save"):
        data = _png_bytes(image)
    elif isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    else:
        with open(image, "rb") as f:
            data = f.read()
    mime = _image_mime(data)
    if mime is None:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as opened:
                data, mime = _png_bytes(opened.convert("RGB")), "image/png"
        except OSError as err:  # UnidentifiedImageError too
            raise GOTError("The page image is not in an image format that can be read.") from err
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _page_images(image, count: int, one_text: bool) -> list:
    """What goes beside each page: None, an image, or a list of images (a document read as one); GOTError when the
    images do not match the pages."""
    if one_text:
        return [image]
    if isinstance(image, (list, tuple)):
        if len(image) != count:
            raise GOTError(f"There are {len(image)} images for {count} pages.")
        return list(image)
    if image is not None and count != 1:
        raise GOTError(f"There is one image for {count} pages: give a list with one image per page.")
    return [image] * count


def _figure(image, number: int) -> str:
    """The <figure> of page `number`'s image (or images, one under the other); "" when there is none."""
    images = list(image) if isinstance(image, (list, tuple)) else [] if image is None else [image]
    if len(images) == 1:
        alts = [f"Page {number} as read"]
    else:
        alts = [f"Page {number}, image {index} of {len(images)}" for index in range(1, len(images) + 1)]
    tags = "".join(f'<img src="{_image_data_url(one)}" alt="{alt}">' for one, alt in zip(images, alts, strict=True))
    return f'<figure class="scan">{tags}</figure>\n' if tags else ""


def _page_section(text: str, image, number: int, ocr_type: str) -> str:
    """One page: a <section> with the page image (when there is one) beside the text, rendered when it is
    formatted, as read (escaped, in a <pre>) when it is plain."""
    figure = _figure(image, number)
    body = _text_html(text) if ocr_type == FORMATTED else f'<pre class="plain">{html.escape(text)}</pre>'
    classes = "page with-image" if figure else "page"
    return (
        f'<section class="{classes}" aria-label="Page {number}">\n{figure}'
        f'<div class="text">\n{body}\n</div>\n</section>'
    )


def to_html(
    text: Union[str, Sequence[str]],
    image=None,
    title: Optional[str] = None,
    ocr_type: str = FORMATTED,
    page_numbers: Optional[Sequence[Optional[int]]] = None,
) -> str:
    """One self-contained HTML5 document for one page (`text` a str) or several (a list: one <section> each,
    labelled with `page_numbers`, 1, 2, ... by default).

    `image` (None, a PIL image, image bytes or a path) is embedded as a `data:` URL beside the text; for several
    pages give a list with one entry per page. An entry may itself be a list: the images of a document read as one
    text, shown one under the other. Formatted text (`ocr_type` "format") is rendered; plain text (any other) is
    shown as it was read. Tables, MathML and styles are inline; the Content-Security-Policy forbids scripts and
    network loads.
    """
    pages = [text] if isinstance(text, str) else list(text)
    images = _page_images(image, len(pages), isinstance(text, str))
    numbers = _page_numbers(page_numbers, len(pages))
    sections = "\n".join(
        _page_section(page, page_image, number, ocr_type)
        for page, page_image, number in zip(pages, images, numbers, strict=True)
    )
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title or DEFAULT_TITLE)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n{sections}\n</main>\n</body>\n</html>\n"
    )


def source_image(path: str, page: Optional[int] = None):
    """The input image to show beside a result: `path` itself for an image file, page `page` (1-based) rendered at
    PDF_DPI for a PDF, None when there is no such file; GOTError when a PDF page cannot be rendered."""
    if not os.path.isfile(path):
        return None
    if os.path.splitext(path)[1].lower() != ".pdf":
        return path
    import pypdfium2

    try:
        document = pypdfium2.PdfDocument(path)
    except pypdfium2.PdfiumError as err:
        raise GOTError(f"the PDF cannot be opened ({reason(err)}).") from err
    try:
        if not 1 <= (page or 1) <= len(document):
            raise GOTError(f"the PDF has no page {page}.")
        return document[(page or 1) - 1].render(scale=PDF_DPI / 72).to_pil()
    finally:
        document.close()


def page_title(image: str, page: Optional[int] = None) -> str:
    """The title of a result's HTML page: the input's file name, and its page number for one page of a PDF."""
    return os.path.basename(image) + (f" page {page}" if page else "")


def _image_beside(path: str, page: Optional[int]):
    """`source_image(path, page)`, or None (a warning logged) when it cannot be had."""
    try:
        return source_image(path, page)
    except GOTError as err:
        logger.warning(f"{path}: page {page} is written without its image ({reason(err)}).")  # only PDFs fail here
        return None


def document_html(pages: Sequence[Tuple[str, str, Optional[int]]], ocr_type: str = FORMATTED) -> str:
    """The results of one input as an HTML document: each page `(text, input path, page number or None)` in its
    own section beside its image (see `source_image`), the document titled by `page_title`. An image that cannot be
    had is left out and a warning logged."""
    texts = [text for text, _, _ in pages]
    path, numbers = pages[0][1], [page for _, _, page in pages]
    title = page_title(path, numbers[0] if len(pages) == 1 else None)
    images = [_image_beside(image, page) for _, image, page in pages]
    try:
        return to_html(texts, images, title, ocr_type, numbers)
    except GOTError as err:  # an image file (one page) in a format that cannot be read
        logger.warning(f"{path}: the page is written without its image ({reason(err)}).")
        return to_html(texts, None, title, ocr_type, numbers)
