"""The one home of GOT-OCR2.0's fixed strings and numbers (docs/design.md §2-4).

Token *ids* never live here: they come from the tokenizer or the model config, so that a tiny test
vocabulary behaves exactly like the released one.
"""

# Special tokens of the Qwen-1 tokenizer that GOT relies on (spelling only; ids come from the tokenizer).
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMG_START = "<img>"
IMG_END = "</img>"
IMG_PAD = "<imgpad>"
# Qwen-1's own specials, numbered right after the BPE ranks in this order (151643.. in the released vocabulary).
QWEN_SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END) + tuple(f"<|extra_{index}|>" for index in range(205))

# CLIP normalisation applied to every tile after /255 (RGB order).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Label value ignored by the loss (as in PyTorch / Hugging Face).
IGNORE_INDEX = -100

# The other GOT specials, in vocabulary order after `<|extra_204|>` (docs/design.md §2).
GOT_SPECIAL_TOKENS = ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", IMG_START, IMG_END, IMG_PAD)

# The conversation template of the official demo and of training (docs/design.md §3). The user turn holds
# IMAGE_PLACEHOLDER where the `<img> <imgpad>*n </img>` block goes.
SYSTEM_MESSAGE = "You should follow the instructions carefully and explain your answers in detail."
IMAGE_PLACEHOLDER = "<image>"
SYSTEM_TURN = IM_START + "system\n{system}" + IM_END
USER_TURN = IM_START + "user\n{user}" + IM_END + IM_START + "assistant\n"
# Where a checkpoint records the prompt it was trained with (paddle_got.processing.PromptConfig).
PROMPT_CONFIG_FILE = "prompt_config.json"

# Queries of each OCR mode; {ocr} is PLAIN_OCR or FORMAT_OCR.
OCR_TYPES = ("ocr", "format")
FORMATTED = "format"  # the OCR type whose text paddle_got.render renders; text of the other is shown as it was read
PLAIN_OCR = "OCR: "
FORMAT_OCR = "OCR with format: "
MULTI_CROP_QUERIES = {"ocr": "OCR upon the patch reference: ", "format": "OCR with format upon the patch reference: "}
MULTI_PAGE_QUERIES = {"ocr": "OCR across multi pages: ", "format": "OCR with format across multi pages: "}
COLORS = ("red", "green", "blue")
# Boxes are given to the model in thousandths of the original image's width and height.
BOX_SCALE = 1000

# Multi-crop defaults of the official demo (the paper and HF use up to 12 tiles).
MIN_CROPS = 1
MAX_CROPS = 6

# Generation defaults of the reference (docs/design.md §5).
MAX_NEW_TOKENS = 4096
NO_REPEAT_NGRAM_SIZE = 20

# The dtypes a model can be loaded and run in (bfloat16/float16 need a GPU for matmuls).
DTYPES = ("float32", "bfloat16", "float16")

# Checkpoint files (paddle_got/checkpoint.py reads them; paddle_got/hub.py fetches them).
SAFETENSORS_NAME = "model.safetensors"
WEIGHT_FILES = (
    # (file or index name, format)
    ("model.safetensors.index.json", "safetensors"),
    (SAFETENSORS_NAME, "safetensors"),
    ("pytorch_model.bin.index.json", "torch"),
    ("pytorch_model.bin", "torch"),
    ("model_state.pdparams", "pdparams"),
)
# Files copied along by the converter: everything a tokenizer or processor needs.
TOKENIZER_FILES = (
    "qwen.tiktoken",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "preprocessor_config.json",
    "processor_config.json",
    "generation_config.json",
    PROMPT_CONFIG_FILE,
)

# A Paddle Inference export of the vision encoder + projector (paddle_got/export.py, tools/export_model.py): the
# program and weights `paddle.jit.save` writes under this prefix, what it expects, and where it goes by default.
INFERENCE_PREFIX = "inference"
INFERENCE_METADATA = "inference.yml"
INFERENCE_DIR = "inference"
