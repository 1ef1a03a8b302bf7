"""Writing results: the file of one input's results (text as read, Markdown or HTML), written atomically; the checks
of `--output` (JSON lines and output directories are kept by paddle_got.runs)."""

import json
import os
import tempfile
from typing import List, Optional

from .constants import FORMATTED
from .errors import GOTError, reason

JSONL_SUFFIXES = (".jsonl", ".json")
# Beside an output `x` a run keeps `x.parts/` (each rank's results and the run's settings while it is under way),
# `x.errors.jsonl` and `x.report.json` (paddle_got.runs writes them).
PARTS_SUFFIX = ".parts"
ERRORS_SUFFIX = ".errors.jsonl"
REPORT_SUFFIX = ".report.json"
SETTINGS_FILE = "settings.json"
RENDERINGS = ("md", "html")  # what an output directory gets for formatted text
RENDERED_SUFFIXES = tuple(f".{rendering}" for rendering in RENDERINGS)  # a single file of these holds a whole input


def current_umask() -> int:
    """The process's file-creation mask (read without changing it for longer than the call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_readable_as_umask_allows(path: str) -> None:
    """Give `path` the mode an ordinary new file gets (0666 less the umask): temporary files start as 0600."""
    os.chmod(path, 0o666 & ~current_umask())


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory and a rename.

    The file gets the mode the umask gives new files, as a plain `open(path, "w")` would.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
        make_readable_as_umask_allows(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def json_line(result) -> str:
    """One result as a JSON object on one line (non-ASCII kept readable)."""
    return json.dumps(result.to_dict(), ensure_ascii=False)


def document_key(image: str, page: Optional[int]) -> str:
    """What names a result across runs and tools: its input path, and its page for a PDF page."""
    return image if page is None else f"{image}#page={page}"


def is_result(record) -> bool:
    """True for a JSON object shaped like a `json_line` result: an image path, a page number or none, and a text
    (or an error)."""
    return (
        isinstance(record, dict)
        and isinstance(record.get("image"), str)
        and (record.get("page") is None or isinstance(record["page"], int))
        and (record.get("error") is not None or isinstance(record.get("text"), str))
    )


def read_results(path: str) -> List[dict]:
    """The results of a JSONL that tools/infer.py wrote (`--predictions` of the other tools), in order, blank lines
    skipped; GOTError naming the first line that is not a result."""
    if not os.path.isfile(path):
        raise GOTError(f"--predictions {path} is not a file.")
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise GOTError(f"{path} line {number} is not JSON ({reason(err)}).") from err
                if not is_result(record):
                    raise GOTError(f'{path} line {number} is not a result: it needs "image" and "text" (or "error").')
                records.append(record)
    except UnicodeDecodeError as err:
        raise GOTError(f"{path} is not UTF-8 text.") from err
    if not records:
        raise GOTError(f"{path} holds no results.")
    return records


def output_kind(path: str) -> str:
    """ "jsonl" for *.jsonl/*.json, "file" for another suffix, "directory" for an existing folder or no suffix."""
    if os.path.isdir(path):
        return "directory"
    suffix = os.path.splitext(path)[1].lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    return "file" if suffix else "directory"


def check_output(path: str, inputs: List[str]) -> None:
    """GOTError if `path` cannot receive the results of documents read from `inputs` (the input file of each
    document), checked before any reading starts.

    A single file holds one result, or for .md and .html every page of one input (a PDF); the folder a file goes
    into must exist; a results folder may be created, but only inside an existing one; nothing on the way may be a
    file.
    """
    if output_kind(path) == "file":
        whole_inputs = os.path.splitext(path)[1].lower() in RENDERED_SUFFIXES
        count = len(set(inputs)) if whole_inputs else len(inputs)
        if count > 1:
            raise GOTError(
                f"--output {path} is one file but there are {count} inputs: give a directory or a .jsonl file."
            )
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    ancestor = folder
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise GOTError(f"--output {path} cannot be written: {ancestor} is a file, not a directory.")
    if ancestor != folder:
        raise GOTError(f"--output {path} cannot be written: the directory {folder} does not exist.")
    if not os.access(folder, os.W_OK):
        raise GOTError(f"--output {path} cannot be written: no permission to write in {folder}.")


def file_suffix(ocr_type: str, render: Optional[str] = None) -> str:
    """The suffix of a result's file in an output directory: `.html` with render="html", else `.md` for formatted
    text (rendered to Markdown) and `.txt` for plain text."""
    if render == "html":
        return ".html"
    return ".md" if ocr_type == FORMATTED else ".txt"


def text_file_name(image: str, page: Optional[int], suffix: str) -> str:
    """`<stem><suffix>` for input `image`, with `_page<N>` for a PDF page."""
    stem = os.path.splitext(os.path.basename(image))[0] or "image"
    if page is not None:
        stem += f"_page{page}"
    return stem + suffix


def file_text(records: List[dict], suffix: str, ocr_type: str) -> str:
    """What the file of one input's results holds (`records`: its pages in order, as `json_line` writes them): an
    HTML document with each page beside its image (`.html`), Markdown (`.md`), else the texts as read; formatted
    text is rendered, plain text shown as read (see paddle_got.render). Ends with a newline."""
    if suffix == ".html":
        from .render import document_html

        return document_html([(r["text"], r["image"], r.get("page")) for r in records], ocr_type)
    if suffix == ".md":
        from .render import to_markdown

        return to_markdown([r["text"] for r in records], ocr_type, [r.get("page") for r in records]) + "\n"
    return "".join(r["text"] + "\n" for r in records)


def write_file(results: List, path: str, ocr_type: str) -> None:
    """Write the successful results (one input's, see `check_output`) to the one file `path`, in the form its suffix
    asks for (see `file_text`); nothing when none succeeded."""
    records = [r.to_dict() for r in results if r.error is None]
    if records:
        write_atomic(path, file_text(records, os.path.splitext(path)[1].lower(), ocr_type))


def run_settings(output: str) -> Optional[dict]:
    """The settings (see `text_settings`) of the run that wrote `output`: those of a run under way (its parts), else
    those of a finished run (its report); None when there is none."""
    under_way, finished = os.path.join(output + PARTS_SUFFIX, SETTINGS_FILE), output + REPORT_SUFFIX
    if os.path.exists(under_way):
        with open(under_way, encoding="utf-8") as f:
            return json.load(f)
    if os.path.exists(finished):
        with open(finished, encoding="utf-8") as f:
            return json.load(f).get("settings")
    return None
