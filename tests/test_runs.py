"""Run bookkeeping: torn lines, file names in an output directory, which rank owns which document."""

from paddle_got.outputs import document_key
from paddle_got.runs import Shard, drop_torn_tail, read_records, unique_file_names


def test_torn_and_unparsable_lines_are_left_out_and_cut_before_appending(tmp_path):
    path = tmp_path / "part.jsonl"
    path.write_text('{"image": "a.png", "text": "A"}\nnot json\n{"image": "b.png", "text": "B"}\n{"image": "c.p')
    assert read_records(str(path)) == [{"image": "a.png", "text": "A"}, {"image": "b.png", "text": "B"}]
    drop_torn_tail(str(path))
    assert path.read_text().endswith('{"image": "b.png", "text": "B"}\n')
    assert read_records(str(tmp_path / "missing.jsonl")) == []


def test_file_names_keep_stems_and_separate_same_stems_by_folder(tmp_path):
    flat = {
        document_key("scans/a.png", None): ("scans/a.png", None),
        document_key("scans/b.pdf", 2): ("scans/b.pdf", 2),
    }
    assert list(unique_file_names(flat, ".md").values()) == ["a.md", "b_page2.md"]
    clashing = {document_key(path, None): (path, None) for path in ("x/2024/page.png", "x/2025/page.png")}
    assert list(unique_file_names(clashing, ".txt").values()) == ["2024/page.txt", "2025/page.txt"]


def test_every_document_has_exactly_one_owner():
    owners = [[rank for rank in range(3) if Shard(rank, 3).owns(index)] for index in range(7)]
    assert owners == [[0], [1], [2], [0], [1], [2], [0]]
    assert Shard().owns(5) and Shard(1, 3).name == "00001-of-00003"
