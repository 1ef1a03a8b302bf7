"""Inputs: files, directories (flat and recursive), manifests and PDFs become the list of inputs to read, and each
launched process reads its share of them."""

import ast
import os

import pytest
from PIL import Image

import paddle_got.inputs
from paddle_got.errors import BadInputError
from paddle_got.inputs import InputImage, Shard, document_error, expand_inputs, load_image, load_input, read_manifest


def make_tree(root):
    """a.png, b.pdf (2 pages), notes.md, sub/c.jpg, sub/deeper/d.png under `root`; returns the image paths."""
    import pypdfium2

    (root / "sub" / "deeper").mkdir(parents=True)
    Image.new("RGB", (40, 30), "white").save(root / "a.png")
    Image.new("RGB", (40, 30), "white").save(root / "sub" / "c.jpg")
    Image.new("RGB", (40, 30), "white").save(root / "sub" / "deeper" / "d.png")
    (root / "notes.md").write_text("not an input")
    pdf = pypdfium2.PdfDocument.new()
    for _ in range(2):
        pdf.new_page(200, 100)
    pdf.save(str(root / "b.pdf"))
    pdf.close()


def names(inputs):
    return [(os.path.relpath(inp.name), inp.page, inp.error) for inp in inputs]


def test_load_image_converts_to_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (20, 10), color=128).save(path)
    image = load_image(str(path))
    assert image.mode == "RGB" and image.size == (20, 10) and image.getpixel((0, 0)) == (128, 128, 128)


def test_directory_is_flat_unless_recursive(tmp_path, monkeypatch):
    make_tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert names(expand_inputs(".")) == [("a.png", None, None), ("b.pdf", 1, None), ("b.pdf", 2, None)]
    assert names(expand_inputs(".", recursive=True)) == [
        ("a.png", None, None),
        ("b.pdf", 1, None),
        ("b.pdf", 2, None),
        ("sub/c.jpg", None, None),
        ("sub/deeper/d.png", None, None),
    ]


def test_manifest_lists_paths_relative_to_itself_with_comments(tmp_path, monkeypatch):
    make_tree(tmp_path)
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "pages.txt"
    manifest.write_text("# scanned in May\n../sub/c.jpg\n\n   ../b.pdf  \n../missing.png\n" + str(tmp_path / "a.png"))
    monkeypatch.chdir(tmp_path)
    assert names(expand_inputs("lists/pages.txt")) == [
        ("sub/c.jpg", None, None),
        ("b.pdf", 1, None),
        ("b.pdf", 2, None),
        ("missing.png", None, "missing.png: no such file."),
        ("a.png", None, None),
    ]


def test_manifest_that_lists_no_paths_is_a_bad_input(tmp_path, monkeypatch):
    (tmp_path / "pages.txt").write_text("# nothing scanned yet\n\n")
    monkeypatch.chdir(tmp_path)
    assert names(expand_inputs("pages.txt")) == [("pages.txt", None, "pages.txt: the manifest lists no paths.")]


def test_manifest_that_is_not_text_is_one_sentence(tmp_path):
    manifest = tmp_path / "pages.txt"
    manifest.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(BadInputError, match="a manifest must be UTF-8 text, one path per line"):
        read_manifest(str(manifest))


def test_undecodable_input_keeps_its_reason(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    inp = load_input(expand_inputs(str(path))[0])
    assert inp.image is None and inp.error == f"{path}: cannot read the image (file is corrupt or not an image)."


def test_every_document_is_in_exactly_one_share():
    documents = [f"doc{index}" for index in range(7)]
    assert [Shard(rank, 3).share(documents) for rank in range(3)] == [
        ["doc0", "doc3", "doc6"],
        ["doc1", "doc4"],
        ["doc2", "doc5"],
    ]
    assert Shard().share(documents) == documents
    assert Shard(3, 4).share(documents[:3]) == [] and Shard(1, 3).name == "00001-of-00003"


def test_the_launcher_environment_gives_the_shard(monkeypatch):
    monkeypatch.setenv("PADDLE_TRAINER_ID", "2")
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "4")
    assert Shard.from_launcher() == Shard(2, 4)
    monkeypatch.delenv("PADDLE_TRAINER_ID")
    monkeypatch.delenv("PADDLE_TRAINERS_NUM")
    assert Shard.from_launcher() == Shard(0, 1)


def test_inputs_import_neither_the_pipeline_nor_the_runs():
    tree = ast.parse(open(paddle_got.inputs.__file__, encoding="utf-8").read())
    package_modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level}
    assert "errors" in package_modules and not package_modules & {"pipeline", "runs"}


def test_a_document_is_unreadable_when_its_input_is_or_when_all_its_pages_are():
    good, bad = InputImage("a.png"), InputImage("b.png", error="b.png: no such file.")
    worse = InputImage("c.pdf", error="c.pdf: cannot open the PDF: it is encrypted.")
    assert document_error([good], multi_page=False) is None
    assert document_error([bad], multi_page=False) == "b.png: no such file."
    assert document_error([good, bad], multi_page=True) is None  # read without its bad page
    assert document_error([bad, worse], multi_page=True) == (
        "No page of the document could be read: b.png: no such file. c.pdf: cannot open the PDF: it is encrypted."
    )
