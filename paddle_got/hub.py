"""Where weights come from: a local directory, or a hub id fetched through the hub's own client, cache first.

Sources (`--model_source`, or the environment variable PADDLE_GOT_MODEL_SOURCE; Hugging Face by default):
- `huggingface`: `huggingface_hub` (its cache, `HF_ENDPOINT` mirrors and `HF_HUB_OFFLINE` honoured);
- `modelscope`: the `modelscope` client (`pip install modelscope`; its cache `MODELSCOPE_CACHE`, `MODELSCOPE_ENDPOINT`);
- `aistudio`: `aistudio_sdk` (installed with paddlenlp), file by file into
  `~/.cache/aistudio/paddle_got/<owner>--<name>`
  (`AISTUDIO_CACHE_HOME` replaces `~`), where PaddleMIX's Paddle copy of GOT lives.
Each looks in its local cache first and downloads only what is missing; `PADDLE_GOT_OFFLINE=1` forbids downloads.
Without a network the error is one sentence saying what to run on a machine that has one.
"""

import json
import os
import re
import shutil
import tempfile
from typing import List, Optional

from .config import CONFIG_NAME
from .constants import TOKENIZER_FILES, WEIGHT_FILES
from .errors import GOTError
from .logger import logger

DEFAULT_MODEL = "stepfun-ai/GOT-OCR2_0"
MODEL_SOURCES = ("huggingface", "modelscope", "aistudio")
SOURCE_VARIABLE = "PADDLE_GOT_MODEL_SOURCE"
OFFLINE_VARIABLE = "PADDLE_GOT_OFFLINE"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class NotCached(Exception):
    """A hub id that is not in the source's local cache (the caller may then download it)."""


def offline(source: str) -> bool:
    """True when PADDLE_GOT_OFFLINE (or, for Hugging Face, HF_HUB_OFFLINE) asks for local caches only."""
    variables = (OFFLINE_VARIABLE, "HF_HUB_OFFLINE") if source == "huggingface" else (OFFLINE_VARIABLE,)
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on") for name in variables)


def model_source(requested: Optional[str] = None) -> str:
    """The source to fetch hub ids from: `requested`, else PADDLE_GOT_MODEL_SOURCE, else huggingface."""
    source = (requested or os.environ.get(SOURCE_VARIABLE) or "huggingface").lower()
    if source not in MODEL_SOURCES:
        raise GOTError(f"Unknown model source {source!r}: choose {', '.join(MODEL_SOURCES)}.")
    return source


def resolve_model_path(name_or_path: str, source: Optional[str] = None) -> str:
    """A local checkpoint directory for a directory or a hub id (the source's local cache first, then a download).

    GOTError in one sentence when the directory does not exist or the id can be neither found nor downloaded.
    """
    expanded = os.path.expanduser(name_or_path)
    if os.path.isdir(expanded):
        return expanded
    if os.path.exists(expanded) or not _HUB_ID.fullmatch(name_or_path):
        raise GOTError(f"Model directory {name_or_path} does not exist (give a checkpoint directory or a hub id).")
    source = model_source(source)
    fetch = {"huggingface": _huggingface, "modelscope": _modelscope, "aistudio": _aistudio}[source]
    try:
        return fetch(name_or_path, local_only=True)
    except NotCached:
        pass
    if offline(source):
        raise _cannot_download(name_or_path, source)
    logger.info(f"Downloading {name_or_path} from {source}.")
    try:
        return fetch(name_or_path, local_only=False)
    except GOTError:
        raise
    except Exception as err:  # each client raises its own network and HTTP error types; kept as the cause
        raise _cannot_download(name_or_path, source) from err


def _cannot_download(model_id: str, source: str) -> GOTError:
    """The one-sentence error for a hub id that is neither cached nor downloadable, with what to run elsewhere."""
    folder = model_id.split("/")[-1]
    command = {
        "huggingface": f"huggingface-cli download {model_id} --local-dir {folder}",
        "modelscope": f"modelscope download --model {model_id} --local_dir {folder}",
        "aistudio": f"python tools/download_model.py --model_source aistudio --model_name_or_path {model_id} "
        f"--local_dir {folder}",
    }[source]
    cache = "the local cache" if source == "huggingface" else f"the local {source} cache"
    return GOTError(
        f"{model_id} is not in {cache} and cannot be downloaded here: on a machine with network run `{command}`, "
        f"copy the {folder} folder to this machine and pass --model_name_or_path /path/to/{folder}."
    )


def _huggingface(model_id: str, local_only: bool) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(model_id, local_files_only=local_only)
    except LocalEntryNotFoundError as err:
        if local_only:
            raise NotCached(model_id) from err
        raise


def _modelscope(model_id: str, local_only: bool) -> str:
    try:
        from modelscope import snapshot_download
        from modelscope_hub.errors import CacheNotFound
    except ImportError as err:
        raise GOTError("The modelscope source needs its client: pip install modelscope.") from err
    try:
        return str(snapshot_download(model_id, local_files_only=local_only))
    except CacheNotFound as err:
        if local_only:
            raise NotCached(model_id) from err
        raise


def aistudio_cache_dir(model_id: str) -> str:
    """Where AIStudio downloads of `model_id` are kept: `<AISTUDIO_CACHE_HOME or ~>/.cache/aistudio/paddle_got/`."""
    home = os.environ.get("AISTUDIO_CACHE_HOME") or os.path.expanduser("~")
    return os.path.join(home, ".cache", "aistudio", "paddle_got", model_id.replace("/", "--"))


def _aistudio(model_id: str, local_only: bool) -> str:
    directory = aistudio_cache_dir(model_id)
    if os.path.isfile(os.path.join(directory, CONFIG_NAME)):
        return directory
    if local_only:
        raise NotCached(model_id)
    from aistudio_sdk.hub import download

    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=parent)
    try:

        def fetch(file_name: str, required: bool) -> bool:
            answer = download(repo_id=model_id, filename=file_name, cache_dir=staging)
            if isinstance(answer, dict) and answer.get("error_code"):
                if required:
                    raise GOTError(f"AIStudio has no {file_name} in {model_id}: {answer.get('error_msg', answer)}.")
                return False
            return True

        fetch(CONFIG_NAME, required=True)
        for file_name in _aistudio_weight_files(fetch, staging):
            fetch(file_name, required=True)
        for file_name in TOKENIZER_FILES:
            fetch(file_name, required=False)
        os.replace(staging, directory)  # the directory appears only when every file is there
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _aistudio_weight_files(fetch, staging: str) -> List[str]:
    """The weight files still to fetch: the shards an index lists, or the first single weight file AIStudio has."""
    for file_name, _ in WEIGHT_FILES:
        if not fetch(file_name, required=False):
            continue
        if not file_name.endswith(".index.json"):
            return []
        with open(os.path.join(staging, file_name), encoding="utf-8") as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    raise GOTError(
        "AIStudio has none of the weight files paddle_got reads: " + ", ".join(name for name, _ in WEIGHT_FILES) + "."
    )
