"""Render the demo images used to try out OCR: a text page, a two-column page, formulas, a table and a slide,
plus a two-page PDF of the two pages (for multi-page reading).

    python examples/make_demo_images.py [--out demo_images]

Only Pillow is needed: no network, no downloaded fonts. Text is set in Pillow's built-in scalable font; an image
whose text has a character that font lacks (the formulas' √, ², ∫) is set in DejaVu Sans when it is installed.
Nothing is random (the PDF's dates are fixed), so rerunning writes byte-identical files.
"""

import argparse
import os
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "demo_images"
DEJAVU_SANS = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
MISSING_GLYPH_PROBE = "\ue000"  # a private-use code point: no font draws it, so it shows the missing-glyph box
LINE_SPACING = 1.35

WHITE = 255
BLACK = 0
SLIDE_BOX_COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

TEXT_PAGE_PARAGRAPHS = [
    "Optical character recognition, or OCR, turns a picture of text into the text itself. A scanned letter, "
    "a photographed receipt or a screenshot of a slide all hold words that a computer cannot search, copy or "
    "translate until something reads them. That something used to be a pipeline of separate stages; today it "
    "is more and more often a single neural network.",
    "The classic pipeline first cleans the image, then finds the regions that contain text, splits them into "
    "lines and characters, and finally classifies each character. Every stage can fail on its own: a skewed "
    "page confuses the line finder, touching letters confuse the character splitter, and an unusual font "
    "confuses the classifier.",
    "End-to-end models skip the hand-made stages. An image encoder turns the page into a grid of features, and "
    "a language decoder writes the text one token at a time while looking at those features. Because the "
    "decoder is a language model, it can also write structure: paragraphs, tables in Markdown, or formulas "
    "in LaTeX.",
    "Reading order matters as much as the characters. A page set in two columns must be read down the first "
    "column before the second, and a caption belongs next to its figure, not in the middle of a paragraph. "
    "Good OCR output keeps that order so that the text can be used without fixing it by hand.",
    "To check an OCR system, feed it pages whose text you already know and compare. Clean, rendered pages like "
    "this one are the easy case; if a model stumbles here, it will not do better on a crumpled photograph.",
]

TWO_COLUMNS_TITLE = "Reading Pages in Two Columns"
TWO_COLUMNS_LEFT_PARAGRAPHS = [
    "Newspapers, journals and many reports set their text in two or more columns. Short lines are easier to "
    "read than long ones, and columns let a page hold more text without making the eye travel far.",
    "For a machine, columns are a trap. Reading straight across the page joins the first line of the left "
    "column to the first line of the right one, and the result is a sentence that nobody wrote.",
    "A reader has to notice the white gutter between the columns and treat each column as its own block.",
]
TWO_COLUMNS_RIGHT_PARAGRAPHS = [
    "The right column starts only after the left one ends. Its first sentence continues the argument, so an "
    "OCR system that keeps the order gives back text that reads as the author meant it.",
    "Titles that span both columns come first, before either column. Footnotes and page numbers come last.",
    "This page is a simple test of that behaviour: one title across the top, then two columns of plain prose "
    "with a clear gap between them.",
]

FORMULA_LINES = [
    "x = (-b ± √(b² - 4ac)) / 2a",
    "∫ e^(-x²) dx = √π   (x from -∞ to ∞)",
]

TABLE_HEADER = ["Element", "Symbol", "Atomic number", "Atomic mass"]
TABLE_ROWS = [
    ["Hydrogen", "H", "1", "1.008"],
    ["Helium", "He", "2", "4.0026"],
    ["Lithium", "Li", "3", "6.94"],
    ["Carbon", "C", "6", "12.011"],
    ["Oxygen", "O", "8", "15.999"],
]
TABLE_TEXT_COLUMNS = 2  # the first two columns hold words (left-aligned); the rest hold numbers (right-aligned)

SLIDE_TITLE = "How an End-to-End OCR Model Reads a Page"
SLIDE_BOX_TEXTS = [
    "Encode: a vision encoder turns the page image into a grid of features, one per small patch.",
    "Decode: a language model writes the text token by token, looking back at the image features.",
    "Format: the same model can emit plain text, Markdown tables or LaTeX formulas on request.",
]


def draws_every_char(font: ImageFont.FreeTypeFont, text: str) -> bool:
    """Return whether `font` has a real glyph, not the missing-glyph box, for every visible character of `text`."""
    missing_glyph = _glyph_pixels(font, MISSING_GLYPH_PROBE)
    return all(_glyph_pixels(font, char) != missing_glyph for char in set(text) if not char.isspace())


def _glyph_pixels(font: ImageFont.FreeTypeFont, char: str) -> bytes:
    canvas = Image.new("L", (2 * font.size, 2 * font.size), BLACK)
    ImageDraw.Draw(canvas).text((0, 0), char, font=font, fill=WHITE)
    return canvas.tobytes()


def load_font(size: int, text: str) -> Font:
    """Return a font of `size` px for `text`: Pillow's scalable default, else DejaVu Sans, else the bitmap default."""
    default_font = ImageFont.load_default(size=size)
    if isinstance(default_font, ImageFont.FreeTypeFont) and draws_every_char(default_font, text):
        return default_font
    if DEJAVU_SANS.exists():
        return ImageFont.truetype(str(DEJAVU_SANS), size)
    return default_font


def line_height(font: Font) -> int:
    """Return the vertical distance in pixels from one line of `font` to the next."""
    return round(font.getbbox("Hgjy")[3] * LINE_SPACING)


def wrap_text(text: str, font: Font, max_width: int) -> list[str]:
    """Return `text` split into lines no wider than `max_width` px at spaces; a longer word gets a line of its own."""
    lines = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if current and font.getlength(candidate) > max_width:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def draw_paragraphs(
    draw: ImageDraw.ImageDraw, paragraphs: list[str], font: Font, box: tuple[int, int, int, int]
) -> None:
    """Draw `paragraphs` wrapped inside `box` (left, top, right, bottom), half a line apart; return nothing.

    Raises ValueError if the text does not fit, so that editing the prose cannot silently clip it.
    """
    left, top, right, bottom = box
    step = line_height(font)
    y = top
    for paragraph in paragraphs:
        for line in wrap_text(paragraph, font, right - left):
            if y + step > bottom:
                raise ValueError(f"text does not fit in box {box}: overflowed at {line!r}")
            draw.text((left, y), line, font=font, fill=BLACK)
            y += step
        y += step // 2


def draw_centered(draw: ImageDraw.ImageDraw, text: str, font: Font, center_x: int, top: int) -> None:
    """Draw one line of `text` horizontally centred on `center_x`, its top at `top`; return nothing."""
    draw.text((round(center_x - font.getlength(text) / 2), top), text, font=font, fill=BLACK)


def render_text_page() -> Image.Image:
    """Return a 1000x1300 grayscale page of plain English prose about OCR, black on white."""
    width, height, margin = 1000, 1300, 80
    page = Image.new("L", (width, height), WHITE)
    font = load_font(26, "".join(TEXT_PAGE_PARAGRAPHS))
    text_box = (margin, margin, width - margin, height - margin)
    draw_paragraphs(ImageDraw.Draw(page), TEXT_PAGE_PARAGRAPHS, font, text_box)
    return page


def render_two_columns() -> Image.Image:
    """Return a 1000x1300 grayscale page with a title across the top and two columns of prose below it."""
    width, height, margin, gutter = 1000, 1300, 70, 50
    page = Image.new("L", (width, height), WHITE)
    draw = ImageDraw.Draw(page)
    title_font = load_font(38, TWO_COLUMNS_TITLE)
    body_font = load_font(23, "".join(TWO_COLUMNS_LEFT_PARAGRAPHS + TWO_COLUMNS_RIGHT_PARAGRAPHS))

    draw_centered(draw, TWO_COLUMNS_TITLE, title_font, width // 2, margin)
    rule_y = margin + line_height(title_font) + 10
    draw.line((margin, rule_y, width - margin, rule_y), fill=BLACK, width=2)

    columns_top = rule_y + 30
    column_width = (width - 2 * margin - gutter) // 2
    left_box = (margin, columns_top, margin + column_width, height - margin)
    right_box = (width - margin - column_width, columns_top, width - margin, height - margin)
    draw_paragraphs(draw, TWO_COLUMNS_LEFT_PARAGRAPHS, body_font, left_box)
    draw_paragraphs(draw, TWO_COLUMNS_RIGHT_PARAGRAPHS, body_font, right_box)
    return page


def render_formula() -> Image.Image:
    """Return a 900x300 grayscale image of the quadratic formula and a Gaussian integral, each line centred."""
    width, height = 900, 300
    image = Image.new("L", (width, height), WHITE)
    draw = ImageDraw.Draw(image)
    font = load_font(36, "".join(FORMULA_LINES))
    step = 2 * line_height(font)
    top = (height - step * (len(FORMULA_LINES) - 1) - line_height(font)) // 2
    for index, line in enumerate(FORMULA_LINES):
        draw_centered(draw, line, font, width // 2, top + index * step)
    return image


def render_table() -> Image.Image:
    """Return a grayscale image of a ruled table: a header row and five rows of chemical elements."""
    margin, cell_padding, rule_width = 40, 18, 2
    rows = [TABLE_HEADER] + TABLE_ROWS
    font = load_font(26, "".join("".join(row) for row in rows))
    column_widths = [round(max(font.getlength(cell) for cell in column)) + 2 * cell_padding for column in zip(*rows)]
    row_height = line_height(font) + cell_padding
    _, cap_top, _, cap_bottom = font.getbbox("H")
    table_width, table_height = sum(column_widths), row_height * len(rows)
    image = Image.new("L", (table_width + 2 * margin, table_height + 2 * margin), WHITE)
    draw = ImageDraw.Draw(image)

    column_lefts = [margin + sum(column_widths[:column]) for column in range(len(column_widths))]
    for row_index, row in enumerate(rows):
        text_top = margin + row_index * row_height + (row_height - cap_top - cap_bottom) // 2  # capitals centred
        for column, (cell, cell_left) in enumerate(zip(row, column_lefts)):
            if column < TABLE_TEXT_COLUMNS or row_index == 0:
                text_left = cell_left + cell_padding
            else:
                text_left = round(cell_left + column_widths[column] - cell_padding - font.getlength(cell))
            draw.text((text_left, text_top), cell, font=font, fill=BLACK)

    table_right, table_bottom = margin + table_width, margin + table_height
    for row_index in range(len(rows) + 1):
        y = margin + row_index * row_height
        draw.line((margin, y, table_right, y), fill=BLACK, width=rule_width)
    for x in column_lefts + [table_right]:
        draw.line((x, margin, x, table_bottom), fill=BLACK, width=rule_width)
    return image


def render_slide() -> Image.Image:
    """Return a 1280x720 RGB slide: a title, then three text boxes outlined in pure red, green and blue."""
    width, height, margin, gap, box_padding, outline_width = 1280, 720, 60, 40, 24, 4
    slide = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(slide)
    title_font = load_font(44, SLIDE_TITLE)
    body_font = load_font(28, "".join(SLIDE_BOX_TEXTS))

    draw_centered(draw, SLIDE_TITLE, title_font, width // 2, margin)
    boxes_top = margin + line_height(title_font) + 50
    box_width = (width - 2 * margin - gap * (len(SLIDE_BOX_TEXTS) - 1)) // len(SLIDE_BOX_TEXTS)
    for index, (text, color) in enumerate(zip(SLIDE_BOX_TEXTS, SLIDE_BOX_COLORS)):
        left = margin + index * (box_width + gap)
        outline = (left, boxes_top, left + box_width, height - margin)
        draw.rectangle(outline, outline=color, width=outline_width)
        inset = outline_width + box_padding
        text_box = (left + inset, boxes_top + inset, left + box_width - inset, height - margin - inset)
        draw_paragraphs(draw, [text], body_font, text_box)
    return slide


DEMO_IMAGES = {
    "text_page.png": render_text_page,
    "two_columns.png": render_two_columns,
    "formula.png": render_formula,
    "table.png": render_table,
    "slide.png": render_slide,
}
DEMO_DOCUMENTS = {"two_pages.pdf": (render_text_page, render_two_columns)}
# A fixed date keeps the PDF byte-identical between runs.
PDF_DATE = time.strptime("2024-09-03", "%Y-%m-%d")


def save_atomically(pages: list[Image.Image], path: Path) -> None:
    """Write one image as PNG, or several as the pages of a PDF, through a temporary file and a rename."""
    temporary_path = path.with_name(f".{path.name}.tmp")
    try:
        if path.suffix == ".pdf":
            pages[0].save(
                temporary_path,
                format="PDF",
                save_all=True,
                append_images=pages[1:],
                resolution=150,
                creationDate=PDF_DATE,
                modDate=PDF_DATE,
            )
        else:
            pages[0].save(temporary_path, format="PNG", optimize=True)
        os.replace(temporary_path, path)
    finally:
        temporary_path.unlink(missing_ok=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="output directory (default: %(default)s)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for file_name, render in DEMO_IMAGES.items():
        image = render()
        path = args.out / file_name
        save_atomically([image], path)
        print(f"Wrote {path} ({image.width}x{image.height}, {path.stat().st_size} bytes)", file=sys.stderr)
    for file_name, renders in DEMO_DOCUMENTS.items():
        path = args.out / file_name
        save_atomically([render() for render in renders], path)
        print(f"Wrote {path} ({len(renders)} pages, {path.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
