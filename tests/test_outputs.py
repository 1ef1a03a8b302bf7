"""Writing results: file modes follow the umask, and --output is checked before any reading starts."""

import os
import stat

import pytest

from paddle_got.errors import GOTError
from paddle_got.outputs import check_output, write_atomic


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
