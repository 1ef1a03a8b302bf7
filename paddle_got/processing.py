"""GOTProcessor: images and OCR requests -> prompt ids and pixel tiles (docs/design.md §3-4).

Images are resized with PIL bicubic to the model's square input (aspect ratio not kept), divided by 255 and
normalised with the CLIP mean/std; multi-crop cuts the image into a grid of tiles plus a global view; multi-page
squashes each page into one tile. Batches are left-padded with the tokenizer's pad id.
"""

import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from .config import GOTConfig
from .constants import (
    BOX_SCALE,
    CLIP_MEAN,
    CLIP_STD,
    COLORS,
    FORMAT_OCR,
    IMAGE_PLACEHOLDER,
    IMG_END,
    IMG_PAD,
    IMG_START,
    MAX_CROPS,
    MIN_CROPS,
    MULTI_CROP_QUERIES,
    MULTI_PAGE_QUERIES,
    OCR_TYPES,
    PLAIN_OCR,
    PROMPT_CONFIG_FILE,
    SYSTEM_MESSAGE,
    SYSTEM_TURN,
    USER_TURN,
)
from .errors import BadInputError, GOTError, reason
from .logger import logger
from .outputs import write_atomic
from .tokenizer import GOTTokenizer


@dataclass
class OCRRequest:
    """One document to read: one image, or the pages of a multi-page document, and how to read it.

    `box` is `(x1, y1, x2, y2)` in pixels of the original image; `color` is red, green or blue. `query` replaces
    the mode's query text (for models fine-tuned with their own prompt, e.g. SynthDoG's "OCR:").
    """

    images: List[Image.Image]
    ocr_type: str = "ocr"
    box: Optional[Tuple[float, float, float, float]] = None
    color: Optional[str] = None
    multi_crop: bool = False
    max_crops: int = MAX_CROPS
    multi_page: bool = False
    query: Optional[str] = None


def normalize_tile(image: Image.Image, size: int) -> np.ndarray:
    """Bicubic-resize to `size` x `size`, /255, CLIP-normalise: float32 `[3, size, size]`."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    pixels = (pixels - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return pixels.transpose(2, 0, 1)


def candidate_grids(min_tiles: int, max_tiles: int) -> List[Tuple[int, int]]:
    """Grids (columns, rows) with min <= columns * rows <= max, ordered by tile count as the reference orders them."""
    grids = set(
        (columns, rows)
        for count in range(min_tiles, max_tiles + 1)
        for columns in range(1, count + 1)
        for rows in range(1, count + 1)
        if min_tiles <= columns * rows <= max_tiles
    )
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def choose_grid(width: int, height: int, tile_size: int, min_tiles: int, max_tiles: int) -> Tuple[int, int]:
    """The grid whose columns/rows ratio is closest to width/height.

    A strictly smaller difference wins; on an exact tie the later grid wins when the image covers more than half
    of its tiles' area.
    """
    aspect_ratio = width / height
    best_grid, best_difference = (1, 1), float("inf")
    for columns, rows in candidate_grids(min_tiles, max_tiles):
        difference = abs(aspect_ratio - columns / rows)
        if difference < best_difference:
            best_grid, best_difference = (columns, rows), difference
        elif difference == best_difference and width * height > 0.5 * tile_size * tile_size * columns * rows:
            best_grid = (columns, rows)
    return best_grid


def multi_crop_tile_count(
    width: int, height: int, tile_size: int, min_tiles: int = MIN_CROPS, max_tiles: int = MAX_CROPS
) -> int:
    """How many tiles `crop_tiles` makes of a `width` x `height` image: its grid, plus the whole image when the
    grid has more than one tile."""
    columns, rows = choose_grid(width, height, tile_size, min_tiles, max_tiles)
    return columns * rows + (1 if columns * rows > 1 else 0)


def crop_tiles(image: Image.Image, tile_size: int, min_tiles: int = MIN_CROPS, max_tiles: int = MAX_CROPS):
    """Multi-crop: the image resized to its grid and cut into row-major tiles, plus the whole image last.

    Returns a list of `tile_size` x `tile_size` PIL images (a single tile when the grid is 1x1).
    """
    columns, rows = choose_grid(image.width, image.height, tile_size, min_tiles, max_tiles)
    resized = image.resize((tile_size * columns, tile_size * rows), Image.BICUBIC)
    tiles = []
    for index in range(columns * rows):
        left, top = (index % columns) * tile_size, (index // columns) * tile_size
        tiles.append(resized.crop((left, top, left + tile_size, top + tile_size)))
    if len(tiles) > 1:
        tiles.append(image.resize((tile_size, tile_size), Image.BICUBIC))
    return tiles


def check_box_inside(box: Sequence[float], width: int, height: int) -> None:
    """BadInputError unless the pixel box `(x1, y1, x2, y2)` lies inside a `width` x `height` image."""
    x1, y1, x2, y2 = box
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise BadInputError(
            f"The box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] is outside the {width}x{height} image or empty: "
            "it must satisfy 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height."
        )


def box_query_prefix(box: Sequence[float], width: int, height: int) -> str:
    """`[a, b, c, d]` in thousandths of the image size (truncated), from a pixel box `(x1, y1, x2, y2)`."""
    check_box_inside(box, width, height)
    x1, y1, x2, y2 = box
    scaled = [int(x1 / width * BOX_SCALE), int(y1 / height * BOX_SCALE)]
    scaled += [int(x2 / width * BOX_SCALE), int(y2 / height * BOX_SCALE)]
    return str(scaled)


def validate_box(box: Sequence[float]) -> None:
    """BadInputError for a box that fits no image: not 4 numbers, negative, empty or inverted."""
    if len(box) != 4:
        raise BadInputError(f"A box needs 4 numbers [x1, y1, x2, y2], got {len(box)}.")
    x1, y1, x2, y2 = box
    if min(box) < 0 or not (x1 < x2 and y1 < y2):
        raise BadInputError(
            f"The box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] is negative, empty or inverted: it must satisfy "
            "0 <= x1 < x2 and 0 <= y1 < y2 (pixels of the image)."
        )


def validate_options(
    ocr_type: str = "ocr",
    box=None,
    color=None,
    multi_crop: bool = False,
    max_crops: int = MAX_CROPS,
    multi_page: bool = False,
    query: Optional[str] = None,
) -> None:
    """BadInputError for option values or combinations the model has no prompt for."""
    if ocr_type not in OCR_TYPES:
        raise BadInputError(f"Unknown OCR type {ocr_type!r}: choose ocr or format.")
    if color is not None and color not in COLORS:
        raise BadInputError(f"Unknown colour {color!r}: choose red, green or blue.")
    if box is not None and color is not None:
        raise BadInputError("Give either a box or a colour, not both.")
    if box is not None:
        validate_box(box)
    if query is not None and (box is not None or color is not None):
        raise BadInputError("A custom query replaces the box or colour query: give one or the other.")
    if multi_crop and multi_page:
        raise BadInputError("Multi-crop and multi-page cannot be combined.")
    if (box is not None or color is not None) and (multi_crop or multi_page):
        raise BadInputError("A box or colour applies to one whole image: not with multi-crop or multi-page.")
    if max_crops < MIN_CROPS:
        raise BadInputError(f"max_crops must be at least {MIN_CROPS}.")


READ_OPTION_NAMES = ("ocr_type", "box", "color", "multi_crop", "max_crops", "multi_page", "query")


def read_options(holder) -> dict:
    """The reading options (`READ_OPTION_NAMES`, `validate_options`' arguments) of a request-like object."""
    return {name: getattr(holder, name) for name in READ_OPTION_NAMES}


def validate_request(request: OCRRequest) -> None:
    """BadInputError for a request whose options or image count do not fit together."""
    validate_options(**read_options(request))
    if not request.images:
        raise BadInputError("The request holds no image.")
    if not request.multi_page and len(request.images) != 1:
        raise BadInputError("Several images make one document only in multi-page mode.")


@dataclass
class PromptConfig:
    """The prompt a checkpoint was trained with (`prompt_config.json`): what reading it should use by default.

    `query` is the text after the image block of the first human turn, used for plain OCR of one image when the
    caller gives no query, box or colour (None: the reference's mode queries); `system_message` is the system turn
    (None: no system turn). `queries` counts the first-turn queries of the training data it was learned from.
    """

    query: Optional[str] = None
    system_message: Optional[str] = SYSTEM_MESSAGE
    queries: dict = field(default_factory=dict)

    @classmethod
    def from_training_turns(cls, first_turns: Sequence[str]) -> "PromptConfig":
        """The prompt of training data whose plain samples open with the human turns `first_turns`.

        The query becomes the default only when every sample asks the same one after a leading image block.
        """
        queries = Counter(
            turn[len(IMAGE_PLACEHOLDER) :].removeprefix("\n") if turn.startswith(IMAGE_PLACEHOLDER) else None
            for turn in first_turns
        )
        single = next(iter(queries)) if len(queries) == 1 else None
        return cls(query=single, queries={str(q): n for q, n in queries.most_common()})

    @classmethod
    def from_pretrained(cls, directory: str) -> "PromptConfig":
        """`directory/prompt_config.json`, or the reference prompts when there is none."""
        path = os.path.join(directory, PROMPT_CONFIG_FILE)
        if not os.path.isfile(path):
            return cls()
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
            prompt = cls(**values)
        except (OSError, ValueError, TypeError) as err:
            raise GOTError(f"Cannot read {path}: {reason(err)}.") from err
        if prompt.query is not None:
            logger.info(
                f"Reading with the prompt this model was trained with: query {prompt.query!r} "
                f"(from {path}; --query overrides it)."
            )
        return prompt

    def save_pretrained(self, directory: str) -> None:
        """Write `directory/prompt_config.json`."""
        write_atomic(
            os.path.join(directory, PROMPT_CONFIG_FILE), json.dumps(asdict(self), ensure_ascii=False, indent=2) + "\n"
        )


def build_query(request: OCRRequest, default_query: Optional[str] = None) -> str:
    """The QUERY text of the request's mode (docs/design.md §3), or the request's own `query`.

    `default_query` (a fine-tuned model's own prompt) replaces the plain single-image query.
    """
    if request.query is not None:
        return request.query
    if request.multi_crop:
        return MULTI_CROP_QUERIES[request.ocr_type]
    if request.multi_page:
        return MULTI_PAGE_QUERIES[request.ocr_type]
    query = PLAIN_OCR if request.ocr_type == "ocr" else FORMAT_OCR
    if request.box is not None:
        image = request.images[0]
        return box_query_prefix(request.box, image.width, image.height) + " " + query
    if request.color is not None:
        return f"[{request.color}] " + query
    if request.ocr_type == "ocr" and default_query is not None:
        return default_query
    return query


def build_prompt(user_turn: str, num_image_tokens: int, system_message: Optional[str] = SYSTEM_MESSAGE) -> str:
    """The full conversation text for one user turn, its `<image>` placeholder replaced by the image block.

    `system_message` None leaves the system turn out.
    """
    image_block = IMG_START + IMG_PAD * num_image_tokens + IMG_END
    system = SYSTEM_TURN.format(system=system_message) if system_message is not None else ""
    return system + USER_TURN.format(user=user_turn.replace(IMAGE_PLACEHOLDER, image_block, 1))


@dataclass
class PreparedRequest:
    """What the model needs for one request: prompt ids (a list of ints) and float32 tiles `[T, 3, S, S]`."""

    input_ids: List[int]
    pixel_values: np.ndarray


class GOTProcessor:
    """Turns OCRRequests into model inputs; `from_pretrained` reads the tokenizer and image size of a checkpoint."""

    def __init__(
        self, tokenizer: GOTTokenizer, image_size: int, tokens_per_tile: int, prompt: Optional[PromptConfig] = None
    ):
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.tokens_per_tile = tokens_per_tile
        self.prompt = prompt or PromptConfig()

    @classmethod
    def from_pretrained(cls, directory: str) -> "GOTProcessor":
        """Tokenizer files, config.json and the trained prompt (if any) of a checkpoint directory (any layout)."""
        config = GOTConfig.from_pretrained(directory)
        tokenizer = GOTTokenizer.from_pretrained(directory)
        prompt = PromptConfig.from_pretrained(directory)
        return cls(tokenizer, config.vision_config.image_size, config.image_tokens_per_tile, prompt)

    def save_pretrained(self, directory: str) -> None:
        """Write the tokenizer and prompt files into `directory` (image settings travel in config.json)."""
        self.tokenizer.save_pretrained(directory)
        self.prompt.save_pretrained(directory)

    def tiles(self, request: OCRRequest) -> np.ndarray:
        """Float32 tiles `[T, 3, S, S]` of a request, in the order their features fill the prompt."""
        if request.multi_crop:
            images = crop_tiles(request.images[0], self.image_size, MIN_CROPS, request.max_crops)
        else:
            images = request.images
        return np.stack([normalize_tile(image, self.image_size) for image in images])

    def prepare(self, request: OCRRequest) -> PreparedRequest:
        """Prompt ids and tiles for one request (BadInputError for impossible requests)."""
        validate_request(request)
        pixel_values = self.tiles(request)
        user_turn = IMAGE_PLACEHOLDER + "\n" + build_query(request, self.prompt.query)
        prompt = build_prompt(user_turn, self.tokens_per_tile * len(pixel_values), self.prompt.system_message)
        return PreparedRequest(self.tokenizer.encode(prompt), pixel_values)

    def collate_left_padded(self, prepared: Sequence[PreparedRequest]) -> dict:
        """Left-padded numpy batch: `input_ids`/`attention_mask` int64 `[B, L]`, `pixel_values` `[sum T, 3, S, S]`."""
        length = max(len(p.input_ids) for p in prepared)
        input_ids = np.full((len(prepared), length), self.tokenizer.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(prepared), length), dtype=np.int64)
        for row, item in enumerate(prepared):
            input_ids[row, length - len(item.input_ids) :] = item.input_ids
            attention_mask[row, length - len(item.input_ids) :] = 1
        pixel_values = np.concatenate([p.pixel_values for p in prepared])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}

    def __call__(self, requests: Sequence[OCRRequest]) -> dict:
        """Prepare and collate a batch of requests."""
        return self.collate_left_padded([self.prepare(request) for request in requests])


_NUMBER = r"\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*"
_BOX_PATTERN = re.compile(r"\s*\[?" + ",".join([_NUMBER] * 4) + r"\]?\s*")


def parse_box(text: str) -> Tuple[float, float, float, float]:
    """`"[x1,y1,x2,y2]"` (pixels; brackets optional) -> a tuple of 4 floats; BadInputError if malformed."""
    match = _BOX_PATTERN.fullmatch(text)
    if match is None:
        raise BadInputError(f"Malformed box {text!r}: write it as [x1,y1,x2,y2] in pixels of the image.")
    return tuple(float(value) for value in match.groups())
