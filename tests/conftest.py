"""Shared fixtures: tiny random reference models and their checkpoints in every layout (built once per session)."""

import os
import sys

import pytest

from paddle_got.process import IMPORT_WARNINGS, tune_process

tune_process()  # as the tools do, before Paddle loads

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TESTS, os.path.join(os.path.dirname(TESTS), "examples")]  # the test helpers, the examples

import reference  # noqa: E402

from paddle_got.device import set_cpu_threads  # noqa: E402

set_cpu_threads()


def pytest_configure(config):
    """pytest resets the warning filters around each test: it hides the import warnings through its own option."""
    for message, category in IMPORT_WARNINGS:
        config.addinivalue_line("filterwarnings", f"ignore:{message}:{category.__name__}")


@pytest.fixture(scope="session")
def reference_models():
    """`shape name -> GotOcr2ForConditionalGeneration` with random weights, built on first use."""
    cache = {}

    def get(shape):
        if shape.name not in cache:
            cache[shape.name] = reference.build_reference(shape)
        return cache[shape.name]

    return get


@pytest.fixture(scope="session")
def checkpoint_dirs(tmp_path_factory, reference_models):
    """`(shape, layout) -> directory` holding that reference model saved in `layout`.

    Layouts: "hf", "got" (safetensors), "got_bin" (pytorch_model.bin).
    """
    cache = {}

    def get(shape, layout):
        key = (shape.name, layout)
        if key not in cache:
            directory = str(tmp_path_factory.mktemp(f"{shape.name}_{layout}"))
            model = reference_models(shape)
            if layout == "hf":
                reference.save_hf(model, directory)
            elif layout == "got":
                reference.save_got(model, shape, directory, weights="safetensors")
            elif layout == "got_bin":
                reference.save_got(model, shape, directory, weights="bin")
            else:
                raise ValueError(layout)
            cache[key] = directory
        return cache[key]

    return get


class OCRCheckpoint:
    """A tiny GOT checkpoint with a tokenizer (original GOT layout + qwen.tiktoken) and its reference model."""

    def __init__(self, directory, shape, model):
        self.directory = directory
        self.shape = shape
        self.model = model


@pytest.fixture(scope="session")
def ocr_checkpoint(tmp_path_factory):
    """A tiny readable GOT: 8x8 patch grid (4 image tokens per tile, 64 px tiles), a trained tiny vocabulary."""
    directory = str(tmp_path_factory.mktemp("ocr_checkpoint"))
    num_ranks = reference.write_tiktoken(directory) - reference.NUM_SPECIAL_TOKENS
    shape = reference.tokenizer_shape(reference.SHAPES[0], num_ranks)
    model = reference.build_ocr_reference(shape, num_ranks, seed=17)  # every mode reads non-empty text
    reference.save_got(model, shape, directory)
    return OCRCheckpoint(directory, shape, model)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """Meta path of 12 rendered samples (words, lines, paragraphs) in the training format."""
    from paddle_got.data.synth import write_dataset

    return write_dataset(str(tmp_path_factory.mktemp("synth")), num_samples=12, seed=0)
