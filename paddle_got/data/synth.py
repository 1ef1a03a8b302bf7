"""A small SynthDoG-like dataset rendered offline with PIL: words, lines and short paragraphs on varied backgrounds.

Written in the training format (an image folder, `annotations.json`, `meta.json`), with the SynthDoG-EN question
`<image>\\nOCR:`. The same seed gives the same dataset; different seeds give disjoint renderings.
"""

import json
import os
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

from ..constants import IMAGE_PLACEHOLDER
from ..outputs import write_atomic

SYNTHDOG_QUESTION = IMAGE_PLACEHOLDER + "\nOCR:"
KINDS = ("word", "line", "paragraph", "chars")
CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
# "chars" samples: up to two lines of 4 characters, each centred in a cell of a 4x4 grid on a square canvas.
CHARS_PER_LINE = 4
CHARS_FONT_SIZE = 40
CHARS_CANVAS = 160
WORDS = (
    "the of and to in is was for on are with as his they be at one have this from or had by hot word but what "
    "some we can out other were all there when up use your how said an each she which do their time if will way "
    "about many then them write would like so these her long make thing see him two has look more day could go "
    "come did number sound no most people my over know water than call first who may down side been now find any "
    "new work part take get place made live where after back little only round man year came show every good me "
    "give our under name very through just form sentence great think say help low line differ turn cause much "
    "mean before move right boy old too same tell does set three want air well also play small end put home read "
    "hand port large spell add even land here must big high such follow act why ask men change went light kind "
    "off need house picture try us again animal point mother world near build self earth father head stand own "
    "page should country found answer school grow study still learn plant cover food sun four between state keep "
    "eye never last let thought city tree cross farm hard start might story saw far sea draw left late run"
).split()


def font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in scalable font at `size` pixels."""
    return ImageFont.load_default(size=size)


def random_text(rng: np.random.Generator, kind: str) -> List[str]:
    """The lines of one sample: a word or two, a line of 3-6 words, 2-4 lines, or 3-8 random letters and digits
    in lines of 4 ("chars": no vocabulary to guess from, only reading helps)."""

    def words(low, high):
        return " ".join(rng.choice(WORDS, size=int(rng.integers(low, high + 1))))

    if kind == "chars":
        text = "".join(rng.choice(list(CHARACTERS), size=int(rng.integers(3, 2 * CHARS_PER_LINE + 1))))
        return [text[:CHARS_PER_LINE], text[CHARS_PER_LINE:]] if len(text) > CHARS_PER_LINE else [text]
    if kind == "word":
        return [words(1, 2)]
    if kind == "line":
        return [words(3, 6)]
    return [words(3, 6) for _ in range(int(rng.integers(2, 5)))]


def background(rng: np.random.Generator, size: Tuple[int, int]) -> Image.Image:
    """A light background: a flat colour, a vertical gradient, or noise, lightly blurred."""
    width, height = size
    base = rng.integers(170, 256, 3)
    style = rng.integers(0, 3)
    if style == 0:
        pixels = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    elif style == 1:
        other = rng.integers(170, 256, 3)
        ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
        pixels = np.broadcast_to(base * (1 - ramp) + other * ramp, (height, width, 3))
    else:
        pixels = base + rng.normal(0, 12, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, 1.2))))


def render_sample(rng: np.random.Generator, kind: str) -> Tuple[Image.Image, str]:
    """One image and its text (lines joined by newlines), dark text on a light background."""
    if kind == "chars":
        return render_char_grid(rng)
    lines = random_text(rng, kind)
    text_font = font(int(rng.integers(20, 33)))
    line_height = int(text_font.size * 1.3)
    widths = [int(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(line, font=text_font)) for line in lines]
    margin = int(rng.integers(6, 24))
    width = max(widths) + 2 * margin
    height = line_height * len(lines) + 2 * margin
    side = max(width, height)  # square canvases squash least when resized to the model's square input
    image = background(rng, (side, side))
    draw = ImageDraw.Draw(image)
    left = int(rng.integers(0, side - width + 1))
    top = int(rng.integers(0, side - height + 1))
    for index, line in enumerate(lines):
        draw.text((left + margin, top + margin + index * line_height), line, fill=text_colour(rng), font=text_font)
    return image, "\n".join(lines)


def render_char_grid(rng: np.random.Generator) -> Tuple[Image.Image, str]:
    """Random letters and digits, one per cell of a 4x4 grid (the middle rows), read row by row.

    A toy layout for training tiny models from scratch: on a 128 px tile each cell is one image token of
    configs/tiny_got, so a few minutes of CPU training can learn it.
    """
    lines = random_text(rng, "chars")
    image = background(rng, (CHARS_CANVAS, CHARS_CANVAS))
    draw = ImageDraw.Draw(image)
    cell = CHARS_CANVAS // CHARS_PER_LINE
    text_font = font(CHARS_FONT_SIZE)
    colour = text_colour(rng)
    for row, line in enumerate(lines, start=1):
        for column, character in enumerate(line):
            centre = (column * cell + cell // 2, row * cell + cell // 2)
            draw.text(centre, character, fill=colour, font=text_font, anchor="mm")
    return image, "\n".join(lines)


def text_colour(rng: np.random.Generator) -> Tuple[int, int, int]:
    """A dark RGB colour."""
    return tuple(int(c) for c in rng.integers(0, 90, 3))


def write_dataset(directory: str, num_samples: int, seed: int, kinds=KINDS) -> str:
    """Render `num_samples` samples into `directory` (images/, annotations.json, meta.json); returns the meta path.

    Files are written to temporary names and renamed, so an interrupted run leaves no half-written file.
    """
    images_dir = os.path.join(directory, "images")
    os.makedirs(images_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    annotations = []
    for index in tqdm(range(num_samples), desc="Rendering", unit="image"):
        image, text = render_sample(rng, kinds[index % len(kinds)])
        file_name = f"{seed}_{index:06d}.png"
        temporary = os.path.join(images_dir, f".{file_name}.tmp")
        image.save(temporary, format="PNG")
        os.replace(temporary, os.path.join(images_dir, file_name))
        annotations.append(
            {
                "image": file_name,
                "conversations": [{"from": "human", "value": SYNTHDOG_QUESTION}, {"from": "gpt", "value": text}],
            }
        )
    write_json(os.path.join(directory, "annotations.json"), annotations)
    meta_path = os.path.join(directory, "meta.json")
    write_json(meta_path, {"synth": {"images": "images", "annotations": "annotations.json"}})
    return meta_path


def write_json(path: str, value) -> None:
    """Write `value` as JSON, atomically."""
    write_atomic(path, json.dumps(value, ensure_ascii=False, indent=1))
