"""Long runs over many inputs: results kept as they are made, resumable after any kill, shared out over the ranks of
`paddle.distributed.launch`, with a list of failures and a run report (docs/design.md §11).

For `--output out.jsonl` (R = rank, W = number of ranks):

    out.jsonl                           the results in input order once the run is complete (or stopped by
                                        --max_error_rate); a one-process run appends each result to it as it is made
    out.jsonl.parts/part-R-of-W.jsonl   rank R's results (and failures) as they are made, in a sharded run
    out.jsonl.parts/settings.json       the options that change the text, checked by --resume
    out.jsonl.parts/done-R-of-W.json    rank R's report, written when its share is finished (or it stopped)
    out.jsonl.errors.jsonl              the inputs that failed, with their reason
    out.jsonl.report.json               counts and speeds, per rank and in total

For an output directory each text file is written (temporary name, then rename) as it is made and the records go to
`<dir>.parts/part-R-of-W.jsonl`. Every record is one JSON line, flushed and synced before the next input is read; a
line torn by a kill is dropped when the run resumes. Each rank reads its share of the documents (`inputs.Shard`), and
a resumed run may use another number of ranks.
"""

import glob
import json
import os
import shutil
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

from tqdm import tqdm

from .errors import GOTError
from .inputs import Shard, document_error
from .outputs import (
    ERRORS_SUFFIX,
    PARTS_SUFFIX,
    REPORT_SUFFIX,
    SETTINGS_FILE,
    document_key,
    file_suffix,
    file_text,
    output_kind,
    run_settings,
    text_file_name,
    write_atomic,
)
from .pipeline import OCRResult

POLL_SECONDS = 0.5
TAIL_BLOCK = 1 << 16  # bytes read at a time when looking for the last complete line from a file's end


def documents_by_key(documents: List[list]) -> Dict[str, Tuple[str, Optional[int]]]:
    """`document_key -> (image, page)` of each document (a list of InputImage), named by its first input."""
    return {
        document_key(document[0].name, document[0].page): (document[0].name, document[0].page) for document in documents
    }


def text_settings(read_options: dict, model: str, dtype: str) -> dict:
    """The options of a run that change the text (what --resume compares): the reading options but the batch size
    and the stream callback, the model and the dtype; JSON values."""
    settings = {name: value for name, value in read_options.items() if name not in ("batch_size", "stream")}
    box = settings.get("box")
    settings.update(model=model, dtype=dtype, box=list(box) if box is not None else None)
    return settings


def record_key(record: dict) -> str:
    """`document_key` of a result record."""
    return document_key(record["image"], record.get("page"))


def records_after(path: str, offset: int = 0) -> Tuple[List[dict], int]:
    """The complete JSON lines of `path` from byte `offset` on (a last line torn by a kill, or any line that does not
    parse, is left out) and the offset just after the last of them; `([], offset)` when the file does not exist."""
    records: List[dict] = []
    if not os.path.exists(path):
        return records, offset
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f:
            if not line.endswith(b"\n"):
                break
            offset += len(line)
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records, offset


def read_records(path: str) -> List[dict]:
    """The complete JSON lines of `path` (see `records_after`); [] when the file does not exist."""
    return records_after(path)[0]


def complete_size(path: str) -> int:
    """The size of `path` up to the end of its last complete line (0 when it has none or does not exist)."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - TAIL_BLOCK)
            f.seek(start)
            newline = f.read(end - start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
    return 0


def drop_torn_tail(path: str) -> None:
    """Cut `path` back to its last complete line, so that appending starts on a fresh line."""
    if os.path.exists(path):
        keep = complete_size(path)
        if keep != os.path.getsize(path):
            os.truncate(path, keep)


def remove_path(path: str) -> None:
    """Remove a file or a directory tree, if it is there."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def unique_file_names(documents: Dict[str, Tuple[str, Optional[int]]], suffix: str) -> Dict[str, str]:
    """`document_key -> file name` in an output directory: `text_file_name` of each document or, when two documents
    would share a name (the same stem in different folders), its path below the folders' common parent."""
    names = {key: text_file_name(image, page, suffix) for key, (image, page) in documents.items()}
    if len(set(names.values())) == len(names):
        return names
    folders = {key: os.path.dirname(os.path.abspath(image)) for key, (image, _) in documents.items()}
    common = os.path.commonpath(list(folders.values()))
    return {
        key: os.path.normpath(os.path.join(os.path.relpath(folders[key], common), name)) for key, name in names.items()
    }


class RunStore:
    """Where a run's results go, what an earlier run already read, and the assembly of the final files.

    `documents` maps the key of every document of the run (all ranks', in input order) to its `(image, page)`;
    `render` ("html") makes an output directory's files HTML pages (see `outputs.file_suffix`).
    Call `prepare()`, wait for every rank, `open()` (rank 0 then `write_settings()`), `add(result)` for every
    finished document, and `finish(report)` at the end: rank 0 then waits for the others and `assemble`s the final
    files.
    """

    def __init__(
        self,
        output: str,
        documents: Dict[str, Tuple[str, Optional[int]]],
        ocr_type: str,
        settings: dict,
        shard: Shard,
        resume: bool = False,
        overwrite: bool = False,
        render: Optional[str] = None,
    ):
        self.output = output.rstrip("/") or output
        self.kind = output_kind(output)
        if self.kind == "file":
            raise GOTError("A run that can be resumed or sharded writes a .jsonl file or a directory, not one file.")
        self.documents, self.ocr_type, self.settings, self.shard = documents, ocr_type, settings, shard
        self.resume, self.overwrite = resume, overwrite
        self.parts = self.output + PARTS_SUFFIX
        self.suffix = file_suffix(ocr_type, render)
        self.file_names = unique_file_names(documents, self.suffix) if self.kind == "directory" else {}
        if self.kind == "jsonl" and shard.world == 1:
            self.part = self.output
        else:
            self.part = os.path.join(self.parts, f"part-{shard.name}.jsonl")
        self._stream = None
        self._seen_offsets: Dict[str, int] = {}
        self._continuing: Optional[bool] = None

    # Before reading -----------------------------------------------------------------------------------------------

    def check_resume(self) -> bool:
        """Whether this run continues an earlier one: True for --resume over a matching earlier run; GOTError when
        the earlier run used options that change the text, unless --overwrite (then the run starts again).

        Decided on the first call and kept: tools/infer.py makes it before the ranks join, so before rank 0 clears
        the earlier run's files (a rank that looked later would find no settings and keep the earlier texts)."""
        if self._continuing is None:
            self._continuing = self.resume and self._matches_earlier_run()
        return self._continuing

    def _matches_earlier_run(self) -> bool:
        """True when no earlier run or one with the same settings is there, False with --overwrite when the
        settings differ, else GOTError."""
        earlier = run_settings(self.output)
        if earlier is None or earlier == self.settings:
            return True
        if self.overwrite:
            return False
        changed = ", ".join(
            f"{name} {earlier.get(name)!r} -> {value!r}"
            for name, value in self.settings.items()
            if earlier.get(name) != value
        )
        raise GOTError(
            f"{self.output} was read with other options ({changed}): rerun with the same options, or add "
            "--overwrite to read everything again."
        )

    def prepare(self) -> set:
        """Before every rank has started (then a barrier): decide whether this run continues an earlier one (see
        `check_resume`); rank 0 clears the earlier run's files on a fresh start and the ranks' done markers always.
        Returns the keys of the documents an earlier run already read (none on a fresh start)."""
        continuing = self.check_resume()
        if self.shard.rank == 0:
            stale = glob.glob(os.path.join(self.parts, "done-*.json"))
            if not continuing:
                stale = [self.parts, self.output + ERRORS_SUFFIX, self.output + REPORT_SUFFIX]
                stale += [self.output] if self.kind == "jsonl" else []
            for path in stale:
                remove_path(path)
        if not continuing:
            return set()
        # No rank of this run writes before the barrier: what the other ranks' parts hold now is the earlier run's,
        # and progress and the error budget count only what follows.
        self._seen_offsets = {path: complete_size(path) for path in self._other_parts()}
        return self.kept_keys()

    def open(self) -> None:
        """After the barrier: open this rank's part for appending (a torn last line dropped). Rank 0 then calls
        `write_settings`."""
        os.makedirs(self.parts, exist_ok=True)
        if self.kind == "directory":
            os.makedirs(self.output, exist_ok=True)
        drop_torn_tail(self.part)
        self._stream = open(self.part, "a", encoding="utf-8")

    def write_settings(self) -> None:
        """Rank 0: record the options that change the text (after every rank has started)."""
        write_atomic(os.path.join(self.parts, SETTINGS_FILE), json.dumps(self.settings, indent=1) + "\n")

    def kept_keys(self) -> set:
        """Keys of the documents an earlier run read without error: their record in a .jsonl output, their text
        file in a directory."""
        if self.kind == "directory":
            return {key for key, name in self.file_names.items() if os.path.exists(os.path.join(self.output, name))}
        return {record_key(r) for r in self._all_records() if "error" not in r} & set(self.documents)

    # While reading ------------------------------------------------------------------------------------------------

    def add(self, result) -> None:
        """Keep one finished document: its text file (directory output), then its record, flushed and synced."""
        record = result.to_dict()
        if result.error is None and self.kind == "directory":
            name = self.file_names[document_key(result.image, result.page)]
            write_atomic(os.path.join(self.output, name), file_text([record], self.suffix, self.ocr_type))
            record = {"image": result.image, "page": result.page, "file": name}
        self._stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._stream.flush()
        os.fsync(self._stream.fileno())

    def others_added(self) -> Tuple[int, int]:
        """`(records, failures among them)` the other ranks added since the last call (for rank 0's progress bar and
        the error budget)."""
        added = failed = 0
        for path in self._other_parts():
            seen = self._seen_offsets.get(path, 0)
            if os.path.getsize(path) > seen:
                records, self._seen_offsets[path] = records_after(path, seen)
                added += len(records)
                failed += sum("error" in record for record in records)
        return added, failed

    def _other_parts(self) -> List[str]:
        """The part files of this run's other ranks (those that exist yet)."""
        if self.shard.world == 1:
            return []
        pattern = os.path.join(self.parts, f"part-*-of-{self.shard.world:05d}.jsonl")
        return [path for path in glob.glob(pattern) if path != self.part]

    # At the end ---------------------------------------------------------------------------------------------------

    def finish(self, report: dict, on_wait=None) -> Optional[List[dict]]:
        """Close this rank's part and leave its report. Rank 0 then waits until every rank has left one (calling
        `on_wait()` every POLL_SECONDS and once when all have) and returns them in rank order; other ranks return
        None."""
        self._stream.close()
        write_atomic(os.path.join(self.parts, f"done-{self.shard.name}.json"), json.dumps(report) + "\n")
        if self.shard.rank != 0:
            return None
        markers = [
            os.path.join(self.parts, f"done-{Shard(rank, self.shard.world).name}.json")
            for rank in range(self.shard.world)
        ]
        while True:  # `on_wait` runs once more after the last marker: a rank writes its records before its marker
            done = all(os.path.exists(marker) for marker in markers)
            if on_wait is not None:
                on_wait()
            if done:
                break
            time.sleep(POLL_SECONDS)
        ranks = []
        for marker in markers:
            with open(marker, encoding="utf-8") as f:
                ranks.append(json.load(f))
        return ranks

    def _all_records(self) -> Iterable[dict]:
        sources = [self.output] if self.kind == "jsonl" else []
        sources += sorted(glob.glob(os.path.join(self.parts, "part-*.jsonl")))
        for path in dict.fromkeys(sources):
            yield from read_records(path)

    def latest_records(self) -> Dict[str, dict]:
        """`document_key -> record` of every document the run's files hold a record of: its result, else its
        failure."""
        latest: Dict[str, dict] = {}
        for record in self._all_records():
            key = record_key(record)
            if "error" not in record or "error" in latest.get(key, {"error": True}):
                latest[key] = record
        return latest

    def assemble(self, report: dict, stopped: bool = False) -> None:
        """Rank 0, once every rank has finished: write the results in input order (a .jsonl output), the failures in
        input order to `<output>.errors.jsonl` and `report` (the whole run's) to `<output>.report.json`, then remove
        the parts. GOTError when a document has no record, unless the run was `stopped` before reading all."""
        latest = self.latest_records()
        kept = self.kept_keys() if self.kind == "directory" else set()
        missing = [key for key in self.documents if key not in latest and key not in kept]
        if missing and not stopped:
            raise GOTError(
                f"No result for {counted(len(missing), 'input')} after every rank finished (the first: {missing[0]}): "
                f"is {self.parts} on storage that every machine of the run shares?"
            )
        if self.kind == "jsonl":
            ordered = [latest[key] for key in self.documents if key in latest]
            write_atomic(
                self.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered if "error" not in r)
            )
        errors = [latest[key] for key in self.documents if "error" in latest.get(key, {})]
        write_atomic(self.output + ERRORS_SUFFIX, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in errors))
        write_atomic(self.output + REPORT_SUFFIX, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        shutil.rmtree(self.parts)


COUNTS = ("inputs", "pages", "done", "skipped", "failed", "new_tokens")


def with_speeds(report: dict) -> dict:
    """`report` (counts and `wall_s`) with pages/s and tokens/s over the wall time it shows (0 for no time)."""
    wall = report["wall_s"]
    report["pages_per_s"] = round(report["pages"] / wall, 3) if wall > 0 else 0.0
    report["tokens_per_s"] = round(report["new_tokens"] / wall, 3) if wall > 0 else 0.0
    return report


def rank_report(shard: Shard, counts: Dict[str, int], wall_s: float) -> dict:
    """One rank's report: its counts (see COUNTS), wall time, and pages/s and tokens/s of what it read."""
    return with_speeds(
        {"rank": shard.rank, **{name: counts.get(name, 0) for name in COUNTS}, "wall_s": round(wall_s, 3)}
    )


def total_report(ranks: List[dict], settings: dict) -> dict:
    """Every rank's report, and their sum (wall time: the longest rank's; speeds over it)."""
    total = {name: sum(r[name] for r in ranks) for name in COUNTS}
    total["wall_s"] = max(r["wall_s"] for r in ranks)
    return {"total": with_speeds(total), "ranks": ranks, "settings": settings}


def counted(count: int, noun: str) -> str:
    """`count` and `noun`, plural unless `count` is 1: "1 page", "0 pages"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def summary_line(counts: dict) -> str:
    """A report's counts (the run's `total`, or one rank's report) in one sentence, the last line a run writes."""
    return (
        f"Read {counts['done']} of {counted(counts['inputs'], 'input')} ({counted(counts['pages'], 'page')}) in "
        f"{counts['wall_s']:.1f} s, {counts['pages_per_s']:.2f} pages/s, {counts['tokens_per_s']:.1f} tokens/s; "
        f"{counts['skipped']} kept from an earlier run, {counts['failed']} failed."
    )


@dataclass(frozen=True)
class ErrorBudget:
    """`--max_error_rate` over a whole run: spent once more than `rate` of the run's `inputs` failed (never when
    `rate` is None)."""

    rate: Optional[float]
    inputs: int

    def exceeded(self, failed: int) -> bool:
        """Whether `failed` failures are more than the budget allows."""
        return self.rate is not None and failed > self.rate * self.inputs

    def reason(self, failed: int) -> str:
        """The sentence that ends a run the budget stopped."""
        return (
            f"Stopping: {failed} of {counted(self.inputs, 'input')} failed, more than --max_error_rate "
            f"{self.rate:g} allows; the results so far are kept (rerun with --resume to go on)."
        )


class RunEnd(NamedTuple):
    """How one rank's run ended: its report, the whole run's (rank 0; None on the other ranks), and the sentence
    saying why the run stopped before reading everything (None when it did not)."""

    report: dict
    total: Optional[dict]
    stopped: Optional[str]


def read_documents(ocr, documents: List[list], read_options: dict) -> Iterator[OCRResult]:
    """One result per document (a list of InputImage), in order: `ocr` reads those whose inputs can be read (see
    `inputs.document_error`), the others fail without it, so `ocr` may be None when no document can be read."""
    errors = [document_error(document, read_options.get("multi_page", False)) for document in documents]
    readable = [inp for document, error in zip(documents, errors) if error is None for inp in document]
    results = ocr.iter_recognize(readable, **read_options) if readable else iter(())
    for document, error in zip(documents, errors):
        yield next(results) if error is None else OCRResult(document[0].name, page=document[0].page, error=error)


def read_run(
    ocr,
    documents: List[list],
    store: RunStore,
    read_options: dict,
    max_error_rate: Optional[float] = None,
    barrier: Optional[Callable[[], None]] = None,
    on_result: Optional[Callable[[object], None]] = None,
) -> RunEnd:
    """Read this rank's share of `documents` (lists of InputImage, in input order; their keys are `store`'s) that an
    earlier run has not read, with `ocr` (see `read_documents`), keeping each result in `store` as it is made and
    passing it to `on_result`.

    `barrier()` waits for every rank (sharded runs). Once more than `max_error_rate` of the run's documents failed,
    counted over every rank's part, each rank stops at its next result; every rank still leaves its report and rank
    0 writes the final files of what was read.
    """
    started = time.perf_counter()
    shard = store.shard
    kept = store.prepare()
    if barrier is not None:
        barrier()
    store.open()
    if shard.rank == 0:
        store.write_settings()
    keys = list(store.documents)
    owned = shard.share(list(zip(keys, documents)))
    todo = [document for key, document in owned if key not in kept]
    counts = dict.fromkeys(COUNTS, 0)
    counts.update(inputs=len(owned), skipped=len(owned) - len(todo))
    budget, run_failed, stopped = ErrorBudget(max_error_rate, len(keys)), 0, None
    progress = tqdm(
        total=len(keys),
        initial=len(kept),
        desc="Reading",
        unit="document" if read_options.get("multi_page") else "page",  # a document is one page unless multi-page
        disable=shard.rank != 0,
        file=sys.stderr,
    )
    with closing(read_documents(ocr, todo, read_options)) as results:
        for position, result in enumerate(results):
            store.add(result)
            counts["new_tokens"] += result.new_tokens
            if result.error is None:
                counts["done"] += 1
                counts["pages"] += len(todo[position])
            else:
                counts["failed"] += 1
                progress.write(f"error: {result.error}", file=sys.stderr)
            if on_result is not None:
                on_result(result)
            # The other ranks' parts are read for rank 0's progress bar and, with a budget, by every rank.
            added, failed_elsewhere = store.others_added() if shard.rank == 0 or budget.rate is not None else (0, 0)
            progress.update(1 + added)
            run_failed += (result.error is not None) + failed_elsewhere
            if budget.exceeded(run_failed) and position + 1 < len(todo):
                stopped = budget.reason(run_failed)
                break
    report = rank_report(shard, counts, time.perf_counter() - started)
    ranks = store.finish(report, on_wait=lambda: progress.update(store.others_added()[0]))
    if ranks is None:
        progress.close()
        return RunEnd(report, None, stopped)
    total = total_report(ranks, store.settings)
    # A rank the budget stopped says so in its report: it accounts for fewer documents than its share.
    unfinished = sum(total["total"][name] for name in ("done", "skipped", "failed")) < len(keys)
    store.assemble(total, stopped=unfinished)
    progress.close()
    return RunEnd(report, total, budget.reason(total["total"]["failed"]) if unfinished else None)
