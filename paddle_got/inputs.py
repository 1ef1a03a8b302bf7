"""Inputs: from paths to decoded images. Image files, directories (optionally recursive), manifests (one path per
line), PDFs (one input per page, rendered when read) and in-memory images become a flat list of `InputImage`; an
input that cannot be read carries its reason instead of stopping the others. `Shard` is the share of them that one
process of `paddle.distributed.launch` reads.
"""

import os
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, TypeVar, Union

from PIL import Image

from .errors import BadInputError
from .processing import check_box_inside

# Larger images are refused rather than decoded (PIL's own decompression-bomb threshold).
MAX_IMAGE_PIXELS = 89_478_485
MIN_IMAGE_SIDE = 2
# Inputs named *.txt / *.lst are manifests: one path per line.
MANIFEST_EXTENSIONS = (".txt", ".lst")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
PDF_RENDER_DPI = 200

ImageInput = Union[str, Image.Image, "InputImage"]
T = TypeVar("T")


def load_image(path: str) -> Image.Image:
    """Open an image file fully decoded as RGB; BadInputError with the reason if it cannot be."""
    if not os.path.exists(path):
        raise BadInputError(f"{path}: no such file.")
    if os.path.isdir(path):
        raise BadInputError(f"{path}: is a directory, not an image.")
    if os.path.getsize(path) == 0:
        raise BadInputError(f"{path}: the file is empty.")
    try:
        return decode_image(path, path)
    except PermissionError as err:
        raise BadInputError(f"{path}: permission denied.") from err


def decode_image(source, name: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode `source` (a path or a binary file object) fully as RGB; BadInputError naming `name` if it cannot be.

    Images of more than `max_pixels` pixels are refused from their header, before decoding.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                check_image_size(opened.size, name, max_pixels)
                return opened.convert("RGB")
    except BadInputError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise BadInputError(f"{name}: the image is too large to decode safely.") from err
    except PermissionError:
        raise
    except (OSError, SyntaxError, ValueError) as err:
        reason = "truncated" if "truncated" in str(err) else "corrupt or not an image"
        raise BadInputError(f"{name}: cannot read the image (file is {reason}).") from err


def check_image_size(size: Tuple[int, int], name: str, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """BadInputError unless `size` = (width, height) is readable: not degenerate, at most `max_pixels` pixels."""
    width, height = size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise BadInputError(f"{name}: the image is {width}x{height} pixels, too small to read.")
    if width * height > max_pixels:
        raise BadInputError(f"{name}: the image is {width}x{height} pixels, too large to decode safely.")


@dataclass
class InputImage:
    """One image to read: a file, a page of a PDF, or an in-memory image; `error` says why it cannot be."""

    name: str
    page: Optional[int] = None
    image: Optional[Image.Image] = None
    error: Optional[str] = None


def open_pdf(source, name: str):
    """An open pypdfium2 document from a path or bytes; BadInputError (encrypted, damaged, no pages) naming `name`."""
    import pypdfium2

    try:
        document = pypdfium2.PdfDocument(source)
    except pypdfium2.PdfiumError as err:
        reason = "it is encrypted" if "password" in str(err).lower() else "it is damaged or holds no pages"
        raise BadInputError(f"{name}: cannot open the PDF: {reason}.") from err
    if len(document) == 0:
        document.close()
        raise BadInputError(f"{name}: the PDF has no pages.")
    return document


def _pdf_pages(path: str) -> List[InputImage]:
    """One input per page of a PDF (rendered on demand); BadInputError if the PDF cannot be opened."""
    document = open_pdf(path, path)
    count = len(document)
    document.close()
    return [InputImage(path, page=index + 1) for index in range(count)]


def render_pdf_bytes(data: bytes, name: str, max_pages: int, max_pixels: int) -> List[Image.Image]:
    """Every page of a PDF held in memory as an RGB image at PDF_RENDER_DPI; BadInputError (naming `name`) for an
    unreadable PDF, more than `max_pages` pages, or a page of more than `max_pixels` pixels."""
    document = open_pdf(data, name)
    try:
        if len(document) > max_pages:
            raise BadInputError(f"{name}: the PDF has {len(document)} pages, more than the limit of {max_pages}.")
        return [_render_page(document, page, name, max_pixels) for page in range(1, len(document) + 1)]
    finally:
        document.close()


def _pdf_page_size(document, page: int) -> Tuple[int, int]:
    """(width, height) in pixels of page `page` (1-based) of an open pypdfium2 document, rendered at PDF_RENDER_DPI."""
    width, height = document[page - 1].get_size()
    scale = PDF_RENDER_DPI / 72
    return int(width * scale), int(height * scale)


def _render_page(document, page: int, name: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Page `page` (1-based) of an open document as an RGB image at PDF_RENDER_DPI, refused (BadInputError) when
    it would exceed `max_pixels`."""
    check_image_size(_pdf_page_size(document, page), f"{name} page {page}", max_pixels)
    return document[page - 1].render(scale=PDF_RENDER_DPI / 72).to_pil().convert("RGB")


def _render_pdf_page(path: str, page: int) -> Image.Image:
    """Page `page` (1-based) of a PDF as an RGB image at PDF_RENDER_DPI."""
    document = open_pdf(path, path)
    try:
        return _render_page(document, page, path)
    finally:
        document.close()


def input_size(inp: "InputImage") -> Optional[Tuple[int, int]]:
    """(width, height) of an input from its header alone (no decoding), or None when it cannot be read."""
    if inp.image is not None:
        return inp.image.size
    try:
        if inp.page is not None:
            document = open_pdf(inp.name, inp.name)
            try:
                return _pdf_page_size(document, inp.page)
            finally:
                document.close()
        with Image.open(inp.name) as opened:
            return opened.size
    except Exception:  # any decoder failure: decoding the input later reports it in its own words
        return None


def mark_box_misfits(inputs: List["InputImage"], box: Tuple[float, float, float, float]) -> None:
    """Record an error on every input that the pixel `box` does not fit, judged from the headers alone."""
    for inp in inputs:
        size = input_size(inp) if inp.error is None else None
        if size is not None:
            try:
                check_box_inside(box, *size)
            except BadInputError as err:
                inp.error = f"{inp.name}: {err}"


def expand_inputs(images: Union[ImageInput, Sequence[ImageInput]], recursive: bool = False) -> List[InputImage]:
    """Files, directories (their images and PDFs, sorted; with `recursive` their subdirectories too), manifests
    (`*.txt`), PDFs (one input per page) and PIL images, as a flat list of InputImage.

    Inputs that cannot be read carry an `error` instead of failing the whole list.
    """
    if isinstance(images, (str, Image.Image, InputImage)):
        images = [images]
    inputs: List[InputImage] = []
    for index, item in enumerate(images):
        if isinstance(item, InputImage):
            inputs.append(item)
        elif isinstance(item, Image.Image):
            inputs.append(InputImage(f"<image {index}>", image=item.convert("RGB")))
        elif os.path.isdir(item):
            files = _directory_files(item, recursive)
            if not files:
                inputs.append(InputImage(item, error=f"{item}: the directory holds no images."))
            inputs.extend(inp for path in files for inp in expand_inputs(path))
        elif item.lower().endswith(MANIFEST_EXTENSIONS) and os.path.isfile(item):
            paths = read_manifest(item)
            if not paths:
                inputs.append(InputImage(item, error=f"{item}: the manifest lists no paths."))
            inputs.extend(expand_inputs(paths, recursive))
        elif item.lower().endswith(".pdf") and os.path.isfile(item):
            try:
                inputs.extend(_pdf_pages(item))
            except BadInputError as err:
                inputs.append(InputImage(item, error=str(err)))
        elif not os.path.exists(item):
            inputs.append(InputImage(item, error=f"{item}: no such file."))
        else:
            inputs.append(InputImage(item))
    return inputs


def _directory_files(directory: str, recursive: bool) -> List[str]:
    """The image and PDF files of `directory` (and, if `recursive`, of every folder below it), sorted by path."""
    readable = IMAGE_EXTENSIONS + (".pdf",)
    if not recursive:
        return [
            os.path.join(directory, name)
            for name in sorted(os.listdir(directory))
            if name.lower().endswith(readable) and not os.path.isdir(os.path.join(directory, name))
        ]
    files = []
    for folder, subfolders, names in os.walk(directory):
        subfolders.sort()
        files.extend(os.path.join(folder, name) for name in names if name.lower().endswith(readable))
    return sorted(files)


def read_manifest(path: str) -> List[str]:
    """The paths listed in a manifest: one per line, blank lines and `#` comments skipped, relative paths taken
    from the manifest's folder; BadInputError if the file cannot be read as UTF-8 text."""
    folder = os.path.dirname(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except UnicodeDecodeError as err:
        raise BadInputError(f"{path}: a manifest must be UTF-8 text, one path per line.") from err
    return [os.path.normpath(os.path.join(folder, line)) for line in lines if line and not line.startswith("#")]


def document_error(document: List[InputImage], multi_page: bool) -> Optional[str]:
    """Why a document (its inputs, one unless `multi_page`) cannot be read as far as its inputs say: the input's
    error, or for a multi-page document the reasons when none of its pages can be read; None when it can be."""
    errors = [inp.error for inp in document if inp.error is not None]
    if not multi_page:
        return errors[0] if errors else None
    if len(errors) < len(document):
        return None
    return "No page of the document could be read: " + " ".join(errors)


def load_input(inp: InputImage) -> InputImage:
    """Decode the input's image in place (errors recorded on the input, not raised); returns `inp`."""
    if inp.image is not None or inp.error is not None:
        return inp
    try:
        inp.image = _render_pdf_page(inp.name, inp.page) if inp.page else load_image(inp.name)
    except BadInputError as err:
        inp.error = str(err)
    return inp


@dataclass(frozen=True)
class Shard:
    """This process's place in a launch of `paddle.distributed.launch`: `rank` of `world` processes (0 of 1 when
    not launched)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_launcher(cls) -> "Shard":
        """The rank and world size `paddle.distributed.launch` gives each process through its environment."""
        return cls(int(os.environ.get("PADDLE_TRAINER_ID", 0)), int(os.environ.get("PADDLE_TRAINERS_NUM", 1)))

    def share(self, items: Sequence[T]) -> List[T]:
        """This rank's share of `items` (the documents of a run, in input order): those whose index is `rank`
        modulo `world`, so each has one owner whatever the moment each rank starts."""
        return list(items[self.rank :: self.world])

    @property
    def name(self) -> str:
        """`R-of-W`, as in the part file names."""
        return f"{self.rank:05d}-of-{self.world:05d}"
