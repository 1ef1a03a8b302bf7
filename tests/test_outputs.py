"""Writing results: file modes follow the umask, --output is checked before any reading starts, and formatted
text goes to .md and .html files rendered."""

import html
import os
import stat
from types import SimpleNamespace

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
    check_output(str(tmp_path / "r.jsonl"), 5)
    check_output(str(tmp_path / "one.txt"), 1)
    check_output(str(tmp_path / "existing"), 5)
    check_output(str(tmp_path / "new_folder"), 5)  # created inside an existing folder
    assert sorted(os.listdir(tmp_path)) == ["existing"]  # checking writes nothing


@pytest.mark.parametrize(
    "relative, message",
    [
        ("missing/dir/x.jsonl", "the directory {tmp}/missing/dir does not exist."),
        ("missing/dir/pages", "the directory {tmp}/missing/dir does not exist."),
        ("notes.txt/x.jsonl", "{tmp}/notes.txt is a file, not a directory."),
        ("notes.txt/deeper/x.jsonl", "{tmp}/notes.txt is a file, not a directory."),
        ("all.txt", "is one file but there are 3 inputs: give a directory or a .jsonl file."),
    ],
)
def test_outputs_that_cannot_be_written(tmp_path, relative, message):
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(GOTError) as caught:
        check_output(str(tmp_path / relative), 3)
    assert str(caught.value).endswith(message.format(tmp=tmp_path))
    assert not (tmp_path / "missing").exists()


FORMATTED = "\\title{Scores}\n\n\\begin{tabular}{lr}\nGOT & 0.97 \\\\\n\\end{tabular}"


def test_formatted_text_is_rendered_for_md_and_html_files_and_plain_text_kept_as_read(tmp_path):
    Image.new("RGB", (20, 10), "white").save(tmp_path / "scan.png")
    result = SimpleNamespace(image=str(tmp_path / "scan.png"), page=None, text=FORMATTED)
    assert [file_suffix("format"), file_suffix("format", "html"), file_suffix("ocr")] == [".md", ".html", ".txt"]
    assert file_text(result, ".md", "format") == "# Scores\n\n| GOT | 0.97 |\n| --- | ---: |\n"
    assert file_suffix("ocr", "html") == ".html"
    assert file_text(result, ".txt", "ocr") == file_text(result, ".txt", "format") == FORMATTED + "\n"
    assert file_text(result, ".md", "ocr") == f"```text\n{FORMATTED}\n```\n"
    page = file_text(result, ".html", "format")
    assert page.startswith("<!DOCTYPE html>") and "<title>scan.png</title>" in page and "<h1>Scores</h1>" in page
    assert '<tr><th>GOT</th><th style="text-align: right">0.97</th></tr>' in page
    assert page.count('<img src="data:image/png;base64,') == 1
    plain = file_text(result, ".html", "ocr")
    assert f'<pre class="plain">{html.escape(FORMATTED)}</pre>' in plain and "<h1>" not in plain
