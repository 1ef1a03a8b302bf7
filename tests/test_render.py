"""paddle_got.render and tools/render.py: GOT's formatted output (tests/render_corpus/) as Markdown, checked by
parsing it back with markdown-it, and as a self-contained HTML page, checked by parsing it with html.parser."""

import base64
import io
import json
import os
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from markdown_it import MarkdownIt
from PIL import Image

import imports

from paddle_got.errors import GOTError
from paddle_got.render import to_html, to_markdown

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "render.py")
CORPUS = os.path.join(REPO, "tests", "render_corpus")
VOID_ELEMENTS = {"meta", "img", "br", "hr", "input", "link"}
# Parsing back with raw HTML allowed, as many Markdown renderers do: escaped HTML must stay text even then.
MARKDOWN = MarkdownIt("commonmark").enable("table")


def corpus(name: str) -> str:
    with open(os.path.join(CORPUS, f"{name}.txt"), encoding="utf-8") as f:
        return f.read()


class Node:
    """An element of a parsed page: tag, attributes, children (nodes and text)."""

    def __init__(self, tag, attrs):
        self.tag, self.attrs, self.children = tag, dict(attrs), []

    def text(self) -> str:
        return "".join(child if isinstance(child, str) else child.text() for child in self.children)

    def all(self, tag=None) -> list:
        """Every element below this one (document order), or those with this tag."""
        found = []
        for child in self.children:
            if isinstance(child, Node):
                found += [child] if tag in (None, child.tag) else []
                found += child.all(tag)
        return found


class TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", [])
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, attrs)
        self.stack[-1].children.append(node)
        if tag not in VOID_ELEMENTS:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Node(tag, attrs))

    def handle_endtag(self, tag):
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(document: str) -> Node:
    builder = TreeBuilder()
    builder.feed(document)
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder.root


def page_text(text: str) -> Node:
    """The rendered text of a one-page document (the <div class="text">)."""
    (div,) = [node for node in parse(to_html(text)).all("div") if node.attrs.get("class") == "text"]
    return div


def cells(table: Node) -> list:
    """Each row's cells as (tag, colspan, rowspan, text)."""
    return [
        [
            (cell.tag, cell.attrs.get("colspan"), cell.attrs.get("rowspan"), cell.text().strip())
            for cell in row.all()
            if cell.tag in ("th", "td")
        ]
        for row in table.all("tr")
    ]


def tokens(markdown: str, kind: str) -> list:
    return [token for token in MARKDOWN.parse(markdown) if token.type == kind]


def headings(markdown: str) -> list:
    parsed = MARKDOWN.parse(markdown)
    return [
        (token.tag, parsed[index + 1].content) for index, token in enumerate(parsed) if token.type == "heading_open"
    ]


SPANNED = [
    [("th", None, "2", "Model"), ("th", "2", None, "Accuracy"), ("th", None, "2", "Size")],
    [("td", None, None, "Text"), ("td", None, None, "Table")],
    [("td", None, None, "GOT"), ("td", None, None, "0.97"), ("td", None, None, "0.91"), ("td", None, None, "580M")],
    [("td", "3", None, "Average of n=2 runs"), ("td", None, None, "--")],
]


def test_a_table_with_spans_becomes_an_html_table_with_colspan_and_rowspan():
    (table,) = page_text(corpus("table_spans")).all("table")
    assert cells(table) == SPANNED
    last_row = table.all("tr")[-1]
    assert [node.attrs["display"] for node in last_row.all("math")] == ["inline"]


def test_a_table_with_spans_stays_an_html_table_in_markdown():
    markdown = to_markdown(corpus("table_spans"))
    assert tokens(markdown, "table_open") == []
    (block,) = tokens(markdown, "html_block")
    (table,) = parse(block.content).all("table")
    expected = [row[:] for row in SPANNED]
    expected[3][0] = ("td", "3", None, "Average of $n=2$ runs")  # math kept as Markdown math
    assert cells(table) == expected


def test_a_plain_tabular_becomes_a_gfm_table_with_its_first_row_as_header():
    markdown = to_markdown(corpus("table_plain"))
    assert len(tokens(markdown, "table_open")) == 1
    assert (len(tokens(markdown, "th_open")), len(tokens(markdown, "td_open"))) == (3, 6)
    assert [token.attrs.get("style") for token in tokens(markdown, "th_open")] == [
        None,
        "text-align:right",
        "text-align:right",
    ]
    (table,) = parse(MARKDOWN.render(markdown)).all("table")
    assert [[text for _, _, _, text in row] for row in cells(table)] == [
        ["Method", "Edit distance", "$F_1$"],
        ["GOT", "0.035", "0.972"],
        ["Fox | ours", "0.061", "0.954"],
    ]
    assert parse(MARKDOWN.render(markdown)).all("p")[0].text() == "Results on the test set:"


def test_a_plain_tabular_in_html():
    text = page_text(corpus("table_plain"))
    (table,) = text.all("table")
    assert [[(tag, text) for tag, _, _, text in row] for row in cells(table)] == [
        [("th", "Method"), ("th", "Edit distance"), ("th", "F1")],
        [("td", "GOT"), ("td", "0.035"), ("td", "0.972")],
        [("td", "Fox | ours"), ("td", "0.061"), ("td", "0.954")],
    ]
    assert len(table.all("msub")) == 1


ESCAPED_CELLS = "\\begin{tabular}{|l|r|}\n\\hline\nR\\&D & 5\\% \\\\\nA\\_B & \\$3 \\\\\n\\hline\n\\end{tabular}"


def test_escaped_characters_in_a_table_are_text_not_cell_breaks():
    expected = [["R&D", "5%"], ["A_B", "$3"]]
    (table,) = parse(MARKDOWN.render(to_markdown(ESCAPED_CELLS))).all("table")
    assert [[text for _, _, _, text in row] for row in cells(table)] == expected
    assert [[text for _, _, _, text in row] for row in cells(page_text(ESCAPED_CELLS).all("table")[0])] == expected


def pipe_table_rows(markdown: str) -> list:
    """Each row of the one pipe table in `markdown`: its cells' text as the parser reads it (escaped `|` undone)."""
    parsed = MARKDOWN.parse(markdown)
    assert [token.type for token in parsed].count("table_open") == 1
    rows = []
    for index, token in enumerate(parsed):
        if token.type == "tr_open":
            rows.append([])
        elif token.type in ("th_open", "td_open"):
            rows[-1].append(parsed[index + 1].content)
    return rows


@pytest.mark.parametrize(
    "text",
    [
        "\\begin{tabular}{ll}\nNorm & Bars \\\\\n$\\|v\\|$ & \\(\\left| x \\right| + a|b\\) \\\\\n\\end{tabular}",
        "| Norm | Bars |\n| --- | --- |\n| $\\|v\\|$ | \\(\\left| x \\right| + a|b\\) |",
    ],
    ids=["tabular", "GOT's own pipe table"],
)
def test_a_bar_in_math_in_a_pipe_table_stays_in_its_cell(text):
    assert pipe_table_rows(to_markdown(text)) == [
        ["Norm", "Bars"],
        ["$\\|v\\|$", "$\\left| x \\right| + a|b$"],
    ]
    assert to_markdown(f"{text}\n\nOutside a table $a|b$ stays.").endswith("\n\nOutside a table $a|b$ stays.")


def test_headings_emphasis_and_unknown_commands_in_markdown():
    markdown = to_markdown(corpus("headings"))
    assert headings(markdown) == [
        ("h1", "GOT-OCR 2.0 Report"),
        ("h2", "Introduction"),
        ("h3", "Scope of $n$ pages"),
        ("h4", "Notes"),
    ]
    assert "We read **all** kinds of *optical* <u>characters</u>, *printed* or written." in markdown
    assert "\\unknowncommand{kept} and \\cite{ref1} stay as text." in markdown


def test_headings_emphasis_and_unknown_commands_in_html():
    text = page_text(corpus("headings"))
    assert [(node.tag, node.text()) for node in text.all() if node.tag in ("h1", "h2", "h3", "h4")] == [
        ("h1", "GOT-OCR 2.0 Report"),
        ("h2", "Introduction"),
        ("h3", "Scope of n pages"),
        ("h4", "Notes"),
    ]
    assert [(node.tag, node.text()) for node in text.all() if node.tag in ("strong", "em", "u")] == [
        ("strong", "all"),
        ("em", "optical"),
        ("u", "characters"),
        ("em", "printed"),
    ]
    assert text.all("p")[-1].text() == "\\unknowncommand{kept} and \\cite{ref1} stay as text."


def test_math_becomes_mathml_inline_and_as_blocks():
    text = page_text(corpus("math"))
    formulas = text.all("math")
    assert [node.attrs["display"] for node in formulas] == ["inline", "inline", "block", "block"]
    assert len(formulas[0].all("mfrac")) == 1 and len(formulas[0].all("msqrt")) == 1
    assert len(formulas[1].all("msubsup")) == 1
    (fraction,) = formulas[2].all("mfrac")
    assert len(fraction.all("msqrt")) == 1 and len(formulas[2].all("munderover")) == 1
    (aligned,) = formulas[3].all("mtable")
    assert len(aligned.all("mtr")) == 2
    assert text.all("p")[-1].text() == "A price of $5 is not math."
    assert text.all("p")[-1].all("math") == []


def test_math_stays_math_in_markdown():
    paragraphs = [token.content for token in tokens(to_markdown(corpus("math")), "inline")]
    assert paragraphs == [
        "The roots are $x=\\frac{-b \\pm \\sqrt{b^{2}-4 a c}}{2 a}$ and $a_{i}^{2}$ is inline too.",
        "$$\\frac{a}{\\sqrt{b^2}} = \\sum_{i=1}^{n} x_{i}$$",
        "$$\\begin{aligned}\nf(x) &= (x+1)^2 \\\\\n&= x^2 + 2x + 1\n\\end{aligned}$$",
        "A price of \\$5 is not math.",
    ]


def test_markdown_lists_and_tables_pass_through():
    text = corpus("lists")
    assert to_markdown(text) == text.strip("\n")
    html_text = page_text(text)
    outer, inner = html_text.all("ul")
    assert [len([li for li in outer.children if isinstance(li, Node)]), len(inner.all("li"))] == [2, 1]
    assert [li.text() for li in html_text.all("ol")[0].all("li")] == ["first", "second"]
    assert [th.text() for th in html_text.all("th")] == ["Name", "Value"]


def test_latex_lists_become_markdown_lists():
    markdown = to_markdown(corpus("latex_lists"))
    assert [token.type for token in MARKDOWN.parse(markdown) if token.type.endswith("list_open")] == [
        "ordered_list_open",
        "bullet_list_open",
    ]
    assert [token.content for token in tokens(markdown, "inline")] == [
        "Steps we follow:",
        "Scan the page at $300$ dpi.",
        "Read it with **GOT**:",
        "plain text",
        "formatted text",
        "**Last** Check the tables.",
        "Done.",
    ]
    (ordered,) = page_text(corpus("latex_lists")).all("ol")
    items = [child for child in ordered.children if isinstance(child, Node)]
    assert [len(item.all("math")) for item in items] == [1, 0, 0]
    assert [li.text() for li in items[1].all("li")] == ["plain text", "formatted text"]
    assert items[2].all("strong")[0].text() == "Last"


@pytest.mark.parametrize(
    "text, markdown",
    [
        ("\\begin{itemize}\n\\item cut off by\n\\item the token limit", "- cut off by\n- the token limit"),
        ("\\begin{itemize}\\item a\\end{enumerate}", "\\begin{itemize}\\item a\\end{enumerate}"),
        ("an \\item outside a list", "an \\item outside a list"),
    ],
    ids=["never closed", "mismatched", "outside"],
)
def test_a_list_cut_off_is_still_a_list_and_one_that_does_not_nest_stays_text(text, markdown):
    assert to_markdown(text) == markdown


def test_chinese_headings_and_cells():
    markdown = to_markdown(corpus("chinese"))
    assert headings(markdown) == [("h1", "实验报告"), ("h2", "一、数据")]
    assert [token.content for token in tokens(markdown, "inline")][2:] == [
        "下表列出了各城市的人口。",
        "城市",
        "人口（万）",
        "北京",
        "2189",
        "上海",
        "2487",
    ]
    text = page_text(corpus("chinese"))
    assert [node.text() for node in text.all() if node.tag in ("h1", "h2")] == ["实验报告", "一、数据"]
    assert [[text for _, _, _, text in row] for row in cells(text.all("table")[0])] == [
        ["城市", "人口（万）"],
        ["北京", "2189"],
        ["上海", "2487"],
    ]


BROKEN_TABLES = [
    "\\begin{tabular}{|c|c|}\n\\hline\n\\multicolumn{3}{|c|}{Too wide} \\\\\na & b \\\\\n\\end{tabular}",
    "\\begin{tabular}{|c|c|}\nA & B \\\\\nC & D \\\\\n",
]


def test_what_cannot_be_rendered_is_shown_as_source_in_a_marked_box():
    text = page_text(corpus("broken"))
    boxes = text.all("pre")
    assert [box.attrs["class"] for box in boxes] == ["render-error", "render-error"]
    assert [box.text() for box in boxes] == BROKEN_TABLES
    assert boxes[0].attrs["title"] == "could not render this table: row 1 has 3 columns but the table has 2"
    assert boxes[1].attrs["title"] == "could not render this table: it has no \\end{tabular}"
    formulas = text.all("code")
    assert [(node.attrs["class"], node.text()) for node in formulas] == [
        ("render-error", "\\(x + y and one the converter rejects:"),
        ("render-error", "\\(\\frac{1}{\\)"),
        ("render-error", "$$x = 1"),
    ]
    assert (
        formulas[0].attrs["title"] == formulas[2].attrs["title"] == "could not render this formula: it is never closed"
    )
    assert formulas[1].attrs["title"].startswith("could not render this formula: the LaTeX converter failed")
    assert text.all("p")[0].text() == "Before the tables." and text.all("table") == []


def test_a_broken_table_stays_as_its_source_in_a_code_block_in_markdown():
    markdown = to_markdown(corpus("broken"))
    fences = tokens(markdown, "fence")
    assert [(fence.info, fence.content) for fence in fences] == [
        ("latex", BROKEN_TABLES[0] + "\n"),
        ("latex", BROKEN_TABLES[1]),
    ]
    paragraph = tokens(markdown, "inline")[1]
    assert [child.content for child in paragraph.children if child.type == "code_inline"] == [
        "\\(x + y and one the converter rejects:"
    ]
    assert paragraph.content.endswith("$\\frac{1}{$.")
    (display,) = [child.content for child in tokens(markdown, "inline")[2].children if child.type == "code_inline"]
    assert display == "$$x = 1"


def attributes(root: Node) -> list:
    return [(node.tag, name, value or "") for node in root.all() for name, value in node.attrs.items()]


def test_hostile_text_is_shown_and_never_runs():
    document = parse(to_html(corpus("hostile")))
    assert {"script", "iframe", "img", "object", "embed", "link"} & {node.tag for node in document.all()} == set()
    assert [entry for entry in attributes(document) if entry[1].startswith("on")] == []
    assert [entry for entry in attributes(document) if "javascript:" in entry[2].lower()] == []
    assert [entry for entry in attributes(document) if entry[1] in ("src", "href") and entry[2]] == [
        ("a", "href", "http://127.0.0.1:9/x.png")
    ]  # a link, not a load
    text = document.text()
    for shown in (
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        "[click me](javascript:alert(1))",
        "<script>alert(2)</script>",
        "<b onmouseover=alert(3)>x</b>",
        "<script>alert(4)</script>",
        '<iframe src="http://127.0.0.1:9/">',
    ):
        assert shown in text


def test_hostile_text_stays_text_in_markdown_even_where_raw_html_is_allowed():
    markdown = to_markdown(corpus("hostile"))
    parsed = MARKDOWN.parse(markdown)
    assert [token for token in parsed if token.type == "html_block"] == []
    assert [child for token in parsed for child in token.children or [] if child.type == "html_inline"] == []
    rendered = parse(MARKDOWN.render(markdown))
    assert "script" not in {node.tag for node in rendered.all()}
    assert "<script>alert(1)</script>" in rendered.text() and "<b onmouseover=alert(3)>x</b>" in rendered.text()


def test_the_page_is_one_self_contained_document():
    document = to_html(corpus("math"), title="A <title>")
    assert document.startswith("<!DOCTYPE html>\n")
    root = parse(document)
    metas = root.all("meta")
    assert {"charset": "utf-8"} in [meta.attrs for meta in metas]
    (policy,) = [meta.attrs["content"] for meta in metas if meta.attrs.get("http-equiv") == "Content-Security-Policy"]
    assert policy == "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    assert [node.text() for node in root.all("title")] == ["A <title>"]
    assert len(root.all("style")) == 1 and root.all("script") == [] and root.all("link") == []
    assert "http://" not in root.all("style")[0].text() and "url(" not in root.all("style")[0].text()


def image_sources(document: str) -> list:
    return [img.attrs["src"] for img in parse(document).all("img")]


def decoded(source: str, mime: str) -> bytes:
    prefix = f"data:{mime};base64,"
    assert source.startswith(prefix)
    return base64.b64decode(source[len(prefix) :])


def encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def test_the_page_image_is_embedded_beside_the_text(tmp_path):
    red = Image.new("RGB", (40, 30), (255, 0, 0))
    document = parse(to_html("\\title{Page}", red))
    (section,) = document.all("section")
    assert section.attrs["class"] == "page with-image"
    assert [node.tag for node in section.children if isinstance(node, Node)] == ["figure", "div"]
    (source,) = [img.attrs["src"] for img in section.all("img")]
    embedded = Image.open(io.BytesIO(decoded(source, "image/png")))
    assert embedded.size == (40, 30) and embedded.convert("RGB").getpixel((5, 5)) == (255, 0, 0)


def test_image_bytes_and_files_are_embedded_as_they_are_and_other_formats_as_png(tmp_path):
    jpeg = encoded(Image.new("RGB", (16, 8), "blue"), "JPEG")
    assert decoded(image_sources(to_html("x", jpeg))[0], "image/jpeg") == jpeg
    png = encoded(Image.new("RGB", (16, 8), "green"), "PNG")
    (tmp_path / "scan.png").write_bytes(png)
    assert decoded(image_sources(to_html("x", str(tmp_path / "scan.png")))[0], "image/png") == png
    tiff = encoded(Image.new("RGB", (16, 8), "white"), "TIFF")
    converted = Image.open(io.BytesIO(decoded(image_sources(to_html("x", tiff))[0], "image/png")))
    assert converted.size == (16, 8)
    with pytest.raises(GOTError):
        to_html("x", b"not an image")


def test_a_document_of_several_pages_has_one_section_per_page():
    image = Image.new("RGB", (10, 10), "white")
    sections = parse(to_html(["\\title{One}", "\\title{Two}"], [image, None])).all("section")
    assert [(section.attrs["aria-label"], section.attrs["class"]) for section in sections] == [
        ("Page 1", "page with-image"),
        ("Page 2", "page"),
    ]
    assert [[h1.text() for h1 in section.all("h1")] for section in sections] == [["One"], ["Two"]]
    assert [len(section.all("img")) for section in sections] == [1, 0]
    with pytest.raises(GOTError, match="2 pages"):
        to_html(["a", "b"], image)
    with pytest.raises(GOTError, match="1 images for 2 pages"):
        to_html(["a", "b"], [image])


def test_a_text_read_from_several_images_has_them_all_beside_it():
    images = [Image.new("RGB", (10, 10), colour) for colour in ("red", "blue")]
    (section,) = parse(to_html("\\title{Both pages}", images)).all("section")
    assert [img.attrs["alt"] for img in section.all("img")] == ["Page 1, image 1 of 2", "Page 1, image 2 of 2"]
    sources = [img.attrs["src"] for img in section.all("img")]
    colours = [Image.open(io.BytesIO(decoded(source, "image/png"))).getpixel((5, 5)) for source in sources]
    assert colours == [(255, 0, 0), (0, 0, 255)]


def test_several_pages_in_markdown_follow_each_other_parted_by_rules():
    markdown = to_markdown(["\\title{One}", "Two $x$"], page_numbers=[3, 5])
    assert markdown == "<!-- page 3 -->\n\n# One\n\n---\n\n<!-- page 5 -->\n\nTwo $x$"
    assert [token.type for token in MARKDOWN.parse(markdown) if token.type in ("html_block", "hr", "heading_open")] == [
        "html_block",
        "heading_open",
        "hr",
        "html_block",
    ]
    assert to_markdown(["\\title{One}"]) == to_markdown("\\title{One}") == "# One"
    sections = parse(to_html(["a", "b"], page_numbers=[3, 5])).all("section")
    assert [section.attrs["aria-label"] for section in sections] == ["Page 3", "Page 5"]
    with pytest.raises(GOTError, match="1 page numbers for 2 pages"):
        to_markdown(["a", "b"], page_numbers=[1])


PLAIN = "# 1. not a heading\n* not a list | $x$ \\textbf{kept}\n\n   <b onmouseover=alert(1)>x</b> &amp; ```"


def test_plain_text_is_shown_as_it_was_read():
    document = parse(to_html(PLAIN, ocr_type="ocr"))
    (div,) = [node for node in document.all("div") if node.attrs.get("class") == "text"]
    (pre,) = [child for child in div.children if isinstance(child, Node)]
    assert (pre.tag, pre.attrs["class"], pre.text()) == ("pre", "plain", PLAIN)
    assert {"h1", "ul", "ol", "b", "strong", "math", "table"} & {node.tag for node in document.all()} == set()
    parsed = MARKDOWN.parse(to_markdown(PLAIN, "ocr"))
    assert [(token.type, token.info, token.content) for token in parsed] == [("fence", "text", PLAIN + "\n")]


def run_tool(*args):
    result = subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")


@pytest.fixture
def predictions(tmp_path):
    """A results JSONL as tools/infer.py writes it, with the inputs in images/ but recorded as elsewhere."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (120, 80), (0, 0, 255)).save(images / "scan.png")
    pages = [Image.new("RGB", (200, 100), colour) for colour in ("red", "lime")]
    pages[0].save(images / "doc.pdf", save_all=True, append_images=pages[1:])  # 72 DPI: 200 x 100 points
    path = tmp_path / "results.jsonl"
    write_jsonl(
        path,
        [
            {"image": "/elsewhere/scan.png", "text": corpus("table_spans")},
            {"image": "/elsewhere/doc.pdf", "page": 1, "text": "\\title{First page}"},
            {"image": "/elsewhere/gone.png", "error": "/elsewhere/gone.png: no such file."},
            {"image": "/elsewhere/doc.pdf", "page": 2, "text": "\\title{Second page}"},
            {"image": "/elsewhere/nowhere.png", "text": "no image here"},
        ],
    )
    return path


def test_the_tool_writes_html_pages_with_their_images_and_a_pdf_as_one_page(predictions, tmp_path):
    out = tmp_path / "pages"
    result = run_tool(
        "--predictions", str(predictions), "--out_dir", str(out), "--images_dir", str(tmp_path / "images")
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(out / "scan.html"), str(out / "doc.html"), str(out / "nowhere.html")]
    assert "error: /elsewhere/gone.png: no such file. (skipped)" in result.stderr.splitlines()
    scan_page = (out / "scan.html").read_text(encoding="utf-8")
    assert decoded(image_sources(scan_page)[0], "image/png") == (tmp_path / "images" / "scan.png").read_bytes()
    assert cells(parse(scan_page).all("table")[0]) == SPANNED
    document = parse((out / "doc.html").read_text())
    assert [node.text() for node in document.all("title")] == ["doc.pdf"]
    sections = document.all("section")
    assert [(section.attrs["aria-label"], [h1.text() for h1 in section.all("h1")]) for section in sections] == [
        ("Page 1", ["First page"]),
        ("Page 2", ["Second page"]),
    ]
    for section, expected in zip(sections, ((255, 0, 0), (0, 255, 0)), strict=True):
        (img,) = section.all("img")
        pdf_page = Image.open(io.BytesIO(decoded(img.attrs["src"], "image/png")))
        assert abs(pdf_page.width - 278) <= 1 and abs(pdf_page.height - 139) <= 1  # 100 DPI
        pixel = pdf_page.convert("RGB").getpixel((100, 50))
        assert all(abs(got - want) < 20 for got, want in zip(pixel, expected))  # PIL stores JPEG in the PDF
    assert image_sources((out / "nowhere.html").read_text()) == []


def test_the_tool_without_images_dir_looks_at_the_recorded_paths(predictions, tmp_path):
    out = tmp_path / "pages"
    assert run_tool("--predictions", str(predictions), "--out_dir", str(out)).returncode == 0
    assert [image_sources(path.read_text()) for path in sorted(out.iterdir())] == [[], [], []]


def test_the_tool_writes_markdown_and_a_pdf_as_one_file(predictions, tmp_path):
    out = tmp_path / "md"
    result = run_tool("--predictions", str(predictions), "--out_dir", str(out), "--format", "md")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["doc.md", "nowhere.md", "scan.md"]
    assert (
        out / "doc.md"
    ).read_text() == "<!-- page 1 -->\n\n# First page\n\n---\n\n<!-- page 2 -->\n\n# Second page\n"
    (block,) = tokens((out / "scan.md").read_text(), "html_block")
    assert cells(parse(block.content).all("table")[0])[0] == SPANNED[0]


def test_the_tool_shows_plain_text_as_read_when_the_run_read_plain_text(tmp_path):
    predictions = tmp_path / "results.jsonl"
    write_jsonl(predictions, [{"image": "scan.png", "text": PLAIN}])
    (tmp_path / "results.jsonl.report.json").write_text(json.dumps({"settings": {"ocr_type": "ocr"}}))
    for options, plain in (([], True), (["--ocr_type", "format"], False)):
        out = tmp_path / f"out{len(options)}"
        result = run_tool("--predictions", str(predictions), "--out_dir", str(out), *options)
        assert result.returncode == 0, result.stderr
        document = parse((out / "scan.html").read_text())
        assert [pre.text() for pre in document.all("pre") if pre.attrs.get("class") == "plain"] == (
            [PLAIN] if plain else []
        )
        assert bool(document.all("h1")) is not plain
    assert (
        run_tool("--predictions", str(predictions), "--out_dir", str(tmp_path / "md"), "--format", "md").returncode == 0
    )
    assert (tmp_path / "md" / "scan.md").read_text() == to_markdown(PLAIN, "ocr") + "\n"


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "error: --predictions {tmp}/missing.jsonl is not a file."),
        (
            "not_json",
            "error: {tmp}/bad.jsonl line 2 is not JSON (Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)).",
        ),
        ("not_a_result", 'error: {tmp}/bad.jsonl line 1 is not a result: it needs "image" and "text" (or "error").'),
        ("same_page", "error: {tmp}/bad.jsonl holds two results for x.pdf#page=2."),
        ("format", "error: Argument --format: invalid choice: 'pdf' (choose from 'html', 'md') (see --help)."),
        ("out_dir_is_a_file", "error: --out_dir {tmp}/results.jsonl is a file, not a directory."),
        (
            "out_dir_parent_missing",
            "error: --out_dir {tmp}/no/pages cannot be made: the directory {tmp}/no does not exist.",
        ),
        (
            "same_name",
            "error: Two results would both be written to {tmp}/pages/x.html: render them into separate directories.",
        ),
    ],
)
def test_bad_input_is_one_sentence_and_exit_code_2_before_anything_is_written(predictions, tmp_path, case, message):
    args = {"predictions": str(predictions), "out_dir": str(tmp_path / "pages")}
    bad = tmp_path / "bad.jsonl"
    if case == "missing":
        args["predictions"] = str(tmp_path / "missing.jsonl")
    elif case == "not_json":
        bad.write_text('{"image": "a.png", "text": "a"}\n{oops\n')
        args["predictions"] = str(bad)
    elif case == "not_a_result":
        write_jsonl(bad, [{"text": "no image"}])
        args["predictions"] = str(bad)
    elif case == "out_dir_is_a_file":
        args["out_dir"] = str(predictions)
    elif case == "out_dir_parent_missing":
        args["out_dir"] = str(tmp_path / "no" / "pages")
    elif case == "same_page":
        write_jsonl(bad, [{"image": "x.pdf", "page": 2, "text": "one"}, {"image": "x.pdf", "page": 2, "text": "two"}])
        args["predictions"] = str(bad)
    elif case == "same_name":
        write_jsonl(bad, [{"image": "a/x.png", "text": "one"}, {"image": "b/x.png", "text": "two"}])
        args["predictions"] = str(bad)
    extra = ["--format", "pdf"] if case == "format" else []
    before = sorted(os.listdir(tmp_path))
    result = run_tool("--predictions", args["predictions"], "--out_dir", args["out_dir"], *extra)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [message.format(tmp=tmp_path)]
    assert sorted(os.listdir(tmp_path)) == before and result.stdout == ""


def test_the_tool_does_not_import_paddle(predictions, tmp_path):
    assert (
        imports.frameworks_imported_by(TOOL, ["--predictions", str(predictions), "--out_dir", str(tmp_path / "o")])
        == []
    )
