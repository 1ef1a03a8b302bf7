"""Writing results: file modes follow the umask, --output is checked before any reading starts, and formatted
text goes to .md and .html files rendered."""

import html
import os
import stat

import pytest
from PIL import Image

from paddle_got.errors import GOTError
from paddle_got.outputs import check_output, file_suffix, file_text, write_atomic


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_mode_of_an_ordinary_new_file(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_atomic(str(tmp_path / "result.txt"), "text\n")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("text\n")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE(os.stat(tmp_path / "result.txt").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode) == 0o666 & ~umask
    assert (tmp_path / "result.txt").read_text() == "text\n"


def test_outputs_that_can_be_written(tmp_path):
    (tmp_path / "existing").mkdir()
    five = [f"{number}.png" for number in range(5)]
    check_output(str(tmp_path / "r.jsonl"), five)
    check_output(str(tmp_path / "one.txt"), ["a.png"])
    check_output(str(tmp_path / "existing"), five)
    check_output(str(tmp_path / "new_folder"), five)  # created inside an existing folder
    check_output(str(tmp_path / "doc.html"), ["doc.pdf"] * 3)  # every page of one PDF in one page
    check_output(str(tmp_path / "doc.md"), ["doc.pdf"] * 3)
    assert sorted(os.listdir(tmp_path)) == ["existing"]  # checking writes nothing


@pytest.mark.parametrize(
    "relative, message",
    [
        ("missing/dir/x.jsonl", "the directory {tmp}/missing/dir does not exist."),
        ("missing/dir/pages", "the directory {tmp}/missing/dir does not exist."),
        ("notes.txt/x.jsonl", "{tmp}/notes.txt is a file, not a directory."),
        ("notes.txt/deeper/x.jsonl", "{tmp}/notes.txt is a file, not a directory."),
        ("all.txt", "is one file but there are 3 inputs: give a directory or a .jsonl file."),
        ("all.html", "is one file but there are 2 inputs: give a directory or a .jsonl file."),
    ],
)
def test_outputs_that_cannot_be_written(tmp_path, relative, message):
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(GOTError) as caught:
        check_output(str(tmp_path / relative), ["doc.pdf", "doc.pdf", "scan.png"])
    assert str(caught.value).endswith(message.format(tmp=tmp_path))
    assert not (tmp_path / "missing").exists()


FORMATTED = "\\title{Scores}\n\n\\begin{tabular}{lr}\nGOT & 0.97 \\\\\n\\end{tabular}"


def test_formatted_text_is_rendered_for_md_and_html_files_and_plain_text_kept_as_read(tmp_path):
    Image.new("RGB", (20, 10), "white").save(tmp_path / "scan.png")
    records = [{"image": str(tmp_path / "scan.png"), "text": FORMATTED}]
    assert [file_suffix("format"), file_suffix("format", "html"), file_suffix("ocr")] == [".md", ".html", ".txt"]
    assert file_suffix("ocr", "html") == ".html"
    assert file_text(records, ".md", "format") == "# Scores\n\n| GOT | 0.97 |\n| --- | ---: |\n"
    assert file_text(records, ".txt", "ocr") == file_text(records, ".txt", "format") == FORMATTED + "\n"
    assert file_text(records, ".md", "ocr") == f"```text\n{FORMATTED}\n```\n"
    page = file_text(records, ".html", "format")
    assert page.startswith("<!DOCTYPE html>") and "<title>scan.png</title>" in page and "<h1>Scores</h1>" in page
    assert '<tr><th>GOT</th><th style="text-align: right">0.97</th></tr>' in page
    assert page.count('<img src="data:image/png;base64,') == 1
    plain = file_text(records, ".html", "ocr")
    assert f'<pre class="plain">{html.escape(FORMATTED)}</pre>' in plain and "<h1>" not in plain


def test_the_pages_of_a_pdf_make_one_file(tmp_path):
    pages = [Image.new("RGB", (200, 100), colour) for colour in ("red", "lime")]
    pages[0].save(tmp_path / "doc.pdf", save_all=True, append_images=pages[1:])
    records = [{"image": str(tmp_path / "doc.pdf"), "page": n, "text": f"\\section{{Part {n}}}"} for n in (1, 2)]
    assert (
        file_text(records, ".md", "format") == "<!-- page 1 -->\n\n## Part 1\n\n---\n\n<!-- page 2 -->\n\n## Part 2\n"
    )
    assert file_text(records, ".txt", "format") == "\\section{Part 1}\n\\section{Part 2}\n"
    document = file_text(records, ".html", "format")
    assert "<title>doc.pdf</title>" in document and document.count("<section ") == 2
    assert document.count('<img src="data:image/png;base64,') == 2
    assert (
        document.index('aria-label="Page 1"')
        < document.index("<h2>Part 1</h2>")
        < document.index('aria-label="Page 2"')
        < document.index("<h2>Part 2</h2>")
    )
