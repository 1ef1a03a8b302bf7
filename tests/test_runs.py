"""Run bookkeeping: torn lines, file names in an output directory, reports, and whole runs of several ranks on
threads with a reader that names what it reads (no model)."""

import json
import os
import threading
import time

import pypdfium2
from PIL import Image

from paddle_got.inputs import InputImage, Shard, expand_inputs
from paddle_got.outputs import document_key
from paddle_got.pipeline import OCRResult
from paddle_got.runs import (
    RunStore,
    complete_size,
    documents_by_key,
    drop_torn_tail,
    rank_report,
    read_records,
    read_run,
    records_after,
    summary_line,
    text_settings,
    total_report,
    unique_file_names,
)


def test_torn_and_unparsable_lines_are_left_out_and_cut_before_appending(tmp_path):
    path = tmp_path / "part.jsonl"
    path.write_text('{"image": "a.png", "text": "A"}\nnot json\n{"image": "b.png", "text": "B"}\n{"image": "c.p')
    assert read_records(str(path)) == [{"image": "a.png", "text": "A"}, {"image": "b.png", "text": "B"}]
    first = len('{"image": "a.png", "text": "A"}\n')
    assert records_after(str(path), first) == (
        [{"image": "b.png", "text": "B"}],
        path.stat().st_size - len('{"image": "c.p'),
    )
    drop_torn_tail(str(path))
    assert path.read_text().endswith('{"image": "b.png", "text": "B"}\n')
    assert read_records(str(tmp_path / "missing.jsonl")) == []
    long_line = json.dumps({"image": "d.png", "text": "D" * 100_000}) + "\n"  # longer than a block read from the end
    path.write_text(long_line + "torn")
    assert complete_size(str(path)) == len(long_line) and complete_size(str(tmp_path / "missing.jsonl")) == 0


def test_file_names_keep_stems_and_separate_same_stems_by_folder(tmp_path):
    flat = {
        document_key("scans/a.png", None): ("scans/a.png", None),
        document_key("scans/b.pdf", 2): ("scans/b.pdf", 2),
    }
    assert list(unique_file_names(flat, ".md").values()) == ["a.md", "b_page2.md"]
    clashing = {document_key(path, None): (path, None) for path in ("x/2024/page.png", "x/2025/page.png")}
    assert list(unique_file_names(clashing, ".txt").values()) == ["2024/page.txt", "2025/page.txt"]


def test_text_settings_leave_out_what_does_not_change_the_text():
    options = {"ocr_type": "format", "box": (1, 2, 30, 40), "max_new_tokens": 8, "batch_size": 1, "stream": print}
    settings = text_settings(options, "model", "float32")
    assert settings == {
        "ocr_type": "format",
        "box": [1, 2, 30, 40],
        "max_new_tokens": 8,
        "model": "model",
        "dtype": "float32",
    }
    assert text_settings({**options, "batch_size": 8, "stream": None}, "model", "float32") == settings
    assert json.loads(json.dumps(settings)) == settings  # as the report and settings.json keep them


def test_reports_count_per_rank_and_in_total_with_speeds_over_the_wall_time_shown():
    first = rank_report(Shard(0, 2), {"inputs": 4, "pages": 3, "done": 3, "failed": 1, "new_tokens": 30}, 1.23456)
    assert first == {
        "rank": 0,
        **{"inputs": 4, "pages": 3, "done": 3, "skipped": 0, "failed": 1, "new_tokens": 30},
        **{"wall_s": 1.235, "pages_per_s": 2.429, "tokens_per_s": 24.291},
    }
    second = rank_report(Shard(1, 2), {"inputs": 4, "pages": 4, "done": 4, "skipped": 2, "new_tokens": 40}, 2.5)
    report = total_report([first, second], {"max_new_tokens": 8})
    assert report["total"] == {
        **{"inputs": 8, "pages": 7, "done": 7, "skipped": 2, "failed": 1, "new_tokens": 70},
        **{"wall_s": 2.5, "pages_per_s": 2.8, "tokens_per_s": 28.0},
    }
    assert report["ranks"] == [first, second] and report["settings"] == {"max_new_tokens": 8}
    assert total_report([first], {})["total"] == {name: value for name, value in first.items() if name != "rank"}


def test_the_summary_counts_in_singular_and_plural():
    one = rank_report(Shard(), {"inputs": 1, "pages": 1, "done": 1, "skipped": 1, "failed": 1, "new_tokens": 5}, 2.0)
    assert summary_line(one) == (
        "Read 1 of 1 input (1 page) in 2.0 s, 0.50 pages/s, 2.5 tokens/s; 1 kept from an earlier run, 1 failed."
    )
    none = rank_report(Shard(), {"inputs": 3, "pages": 0}, 0.0)
    assert summary_line(none) == (
        "Read 0 of 3 inputs (0 pages) in 0.0 s, 0.00 pages/s, 0.0 tokens/s; 0 kept from an earlier run, 0 failed."
    )


class NamingReader:
    """Stands in for GOT: reads each input as its file name, page and max_new_tokens, and remembers what it read."""

    def __init__(self):
        self.read = []

    def iter_recognize(self, images, max_new_tokens, **options):
        for inp in images:
            self.read.append((os.path.basename(inp.name), inp.page))
            yield OCRResult(
                inp.name, f"{os.path.basename(inp.name)} {inp.page} {max_new_tokens}", inp.page, new_tokens=2
            )


class LateReader(NamingReader):
    """A NamingReader that reads nothing before `path` exists (to order what two ranks do)."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def iter_recognize(self, images, **options):
        deadline = time.time() + 30
        while not os.path.exists(self.path) and time.time() < deadline:
            time.sleep(0.01)
        yield from super().iter_recognize(images, **options)


def run_ranks(output, documents, world, max_new_tokens=8, resume=False, overwrite=False, **run_options):
    """A run of `world` ranks on threads as tools/infer.py makes it (every rank checks --resume before the ranks
    join); rank 0 reaches the barrier, and has cleared a fresh run's files, before the other ranks start.
    `run_options`: `readers` (one per rank; NamingReaders by default) and `max_error_rate`. Returns what each rank
    read and each rank's RunEnd."""
    read_options = {"ocr_type": "ocr", "max_new_tokens": max_new_tokens}
    settings = text_settings(read_options, "model", "float32")
    stores = [
        RunStore(str(output), documents_by_key(documents), "ocr", settings, Shard(rank, world), resume, overwrite)
        for rank in range(world)
    ]
    for store in stores:
        store.check_resume()
    barrier, rank0_waits = threading.Barrier(world), threading.Event()
    readers, ends = run_options.get("readers") or [NamingReader() for _ in range(world)], {}

    def rank_run(rank):
        def wait():
            rank0_waits.set()
            barrier.wait()

        max_error_rate = run_options.get("max_error_rate")
        ends[rank] = read_run(readers[rank], documents, stores[rank], read_options, max_error_rate, barrier=wait)

    threads = [threading.Thread(target=rank_run, args=(rank,)) for rank in range(world)]
    threads[0].start()
    rank0_waits.wait()
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return [reader.read for reader in readers], [ends[rank] for rank in range(world)]


def pdf_and_picture(folder):
    """A 5-page PDF and a picture in `folder`: the documents of a run over both (one per page)."""
    pdf = pypdfium2.PdfDocument.new()
    for _ in range(5):
        pdf.new_page(200, 100)
    pdf.save(str(folder / "doc.pdf"))
    pdf.close()
    Image.new("RGB", (40, 30), "white").save(folder / "pic.png")
    return [[inp] for inp in expand_inputs([str(folder / "doc.pdf"), str(folder / "pic.png")])]


def test_pdf_pages_are_shared_and_resumed_page_by_page_with_another_rank_count(tmp_path):
    documents = pdf_and_picture(tmp_path)
    output = tmp_path / "out.jsonl"
    read, _ = run_ranks(output, documents, world=2)
    assert read == [
        [("doc.pdf", 1), ("doc.pdf", 3), ("doc.pdf", 5)],
        [("doc.pdf", 2), ("doc.pdf", 4), ("pic.png", None)],
    ]
    expected = [f"doc.pdf {page} 8" for page in range(1, 6)] + ["pic.png None 8"]
    assert [record["text"] for record in read_records(str(output))] == expected

    lines = output.read_text().splitlines(keepends=True)
    output.write_text("".join(lines[:3] + lines[4:]))  # page 4's result is lost
    read, ends = run_ranks(output, documents, world=3, resume=True)
    total = ends[0].total
    assert read == [[("doc.pdf", 4)], [], []]  # document 3 is rank 0's of 3
    assert [record["text"] for record in read_records(str(output))] == expected
    assert [(r["inputs"], r["skipped"], r["done"]) for r in total["ranks"]] == [(2, 1, 1), (2, 2, 0), (2, 2, 0)]
    assert json.loads((tmp_path / "out.jsonl.report.json").read_text()) == total


def test_overwrite_reads_every_rank_share_again(tmp_path):
    documents = pdf_and_picture(tmp_path)
    output = tmp_path / "texts"
    run_ranks(output, documents, world=2, max_new_tokens=8)
    read, ends = run_ranks(output, documents, world=2, max_new_tokens=4, resume=True, overwrite=True)
    assert [len(share) for share in read] == [3, 3] and ends[0].total["total"]["skipped"] == 0
    assert {name: (output / name).read_text() for name in os.listdir(output)} == {
        **{f"doc_page{page}.txt": f"doc.pdf {page} 4\n" for page in range(1, 6)},
        "pic.txt": "pic.png None 4\n",
    }


def test_each_text_of_an_output_directory_is_renamed_into_place_as_it_is_made(tmp_path, monkeypatch):
    documents = pdf_and_picture(tmp_path)
    output = str(tmp_path / "texts")
    renames, listings, replace = [], [], os.replace

    def recording_replace(source, target):
        renames.append((source, target))
        replace(source, target)

    monkeypatch.setattr(os, "replace", recording_replace)
    store = RunStore(output, documents_by_key(documents), "ocr", {}, Shard())
    read_run(
        NamingReader(), documents, store, {"max_new_tokens": 8}, on_result=lambda _: listings.append(os.listdir(output))
    )
    names = [f"doc_page{page}.txt" for page in range(1, 6)] + ["pic.txt"]
    assert [sorted(listing) for listing in listings] == [sorted(names[: count + 1]) for count in range(6)]
    texts = [(source, target) for source, target in renames if os.path.dirname(target) == output]
    assert [os.path.basename(target) for _, target in texts] == names
    assert all(os.path.dirname(source) == output and ".tmp-" in source for source, _ in texts)


def pictures(folder, count, missing):
    """`count` one-input documents `p0.png`... in `folder`, those whose index is in `missing` not there."""
    names = [str(folder / f"p{index}.png") for index in range(count)]
    return [
        [InputImage(name, error=f"{name}: no such file." if index in missing else None)]
        for index, name in enumerate(names)
    ]


def test_the_error_budget_counts_the_failures_of_every_rank_and_stops_them_all(tmp_path):
    documents = pictures(tmp_path, 8, missing={1, 3, 5})  # all in rank 1's share: 1, 3, 5, 7
    output = tmp_path / "out.jsonl"
    rank0 = LateReader(str(output) + ".parts/done-00001-of-00002.json")  # rank 0 reads once rank 1 has stopped
    read, ends = run_ranks(output, documents, world=2, readers=[rank0, NamingReader()], max_error_rate=0.25)
    # 3 of the run's 8 inputs failed, more than 0.25 allows (2): rank 1 stops before p7, rank 0 after its first.
    assert read == [[("p0.png", None)], []]
    stopped = (
        "Stopping: 3 of 8 inputs failed, more than --max_error_rate 0.25 allows; the results so far are kept "
        "(rerun with --resume to go on)."
    )
    assert [end.stopped for end in ends] == [stopped, stopped]
    assert [(r["inputs"], r["done"], r["failed"]) for r in ends[0].total["ranks"]] == [(4, 1, 0), (4, 0, 3)]
    assert json.loads((tmp_path / "out.jsonl.report.json").read_text()) == ends[0].total
    assert [r["text"] for r in read_records(str(output))] == ["p0.png None 8"]
    assert [r["error"] for r in read_records(str(output) + ".errors.jsonl")] == [
        f"{tmp_path}/p{index}.png: no such file." for index in (1, 3, 5)
    ]

    read, ends = run_ranks(output, documents, world=2, resume=True)
    assert read == [[("p2.png", None), ("p4.png", None), ("p6.png", None)], [("p7.png", None)]]
    assert [r["text"] for r in read_records(str(output))] == [f"p{i}.png None 8" for i in (0, 2, 4, 6, 7)]
    assert ends[0].stopped is None and ends[0].total["total"]["skipped"] == 1


def test_the_error_budget_leaves_out_the_failures_of_the_run_it_resumes(tmp_path):
    documents = pictures(tmp_path, 4, missing={1})
    output = tmp_path / "out.jsonl"
    parts = tmp_path / "out.jsonl.parts"
    parts.mkdir()
    failure = {"image": str(tmp_path / "p1.png"), "error": f"{tmp_path}/p1.png: no such file."}
    (parts / "part-00001-of-00002.jsonl").write_text(json.dumps(failure) + '\n{"image": "p3')  # killed run's part
    rank0 = LateReader(str(parts / "done-00001-of-00002.json"))  # rank 0 reads once rank 1 has finished
    read, ends = run_ranks(output, documents, 2, resume=True, readers=[rank0, NamingReader()], max_error_rate=0.25)
    # p1 fails again: 1 of 4 failed in this run, what 0.25 allows; the earlier run's failure is not counted again.
    assert read == [[("p0.png", None), ("p2.png", None)], [("p3.png", None)]]
    assert [end.stopped for end in ends] == [None, None] and ends[0].total["total"]["failed"] == 1
    assert read_records(str(output) + ".errors.jsonl") == [failure]


def test_the_error_budget_is_the_run_s_not_each_rank_s(tmp_path):
    documents = pictures(tmp_path, 8, missing={1, 3})  # half of rank 1's share, a quarter of the run
    read, ends = run_ranks(tmp_path / "out.jsonl", documents, world=2, max_error_rate=0.25)
    assert read == [[(f"p{i}.png", None) for i in (0, 2, 4, 6)], [(f"p{i}.png", None) for i in (5, 7)]]
    assert [end.stopped for end in ends] == [None, None]
    assert ends[0].total["total"]["done"] == 6 and ends[0].total["total"]["failed"] == 2


def test_a_run_whose_inputs_all_fail_needs_no_model_and_writes_its_errors_and_report(tmp_path):
    documents = pictures(tmp_path, 2, missing={0, 1})
    output = tmp_path / "texts"
    store = RunStore(str(output), documents_by_key(documents), "ocr", {}, Shard())
    end = read_run(None, documents, store, {"max_new_tokens": 8})
    assert end.total["total"]["inputs"] == 2 and end.total["total"]["failed"] == 2 and end.total["total"]["done"] == 0
    assert json.loads((tmp_path / "texts.report.json").read_text()) == end.total
    assert read_records(str(output) + ".errors.jsonl") == [
        {"image": str(tmp_path / f"p{index}.png"), "error": f"{tmp_path}/p{index}.png: no such file."}
        for index in (0, 1)
    ]
    assert os.listdir(output) == []
