"""The one home of GOT-OCR2.0's fixed strings and numbers (got_spec.md sections 2-4).

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

# CLIP normalisation applied to every tile after /255 (RGB order).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Label value ignored by the loss (as in PyTorch / Hugging Face).
IGNORE_INDEX = -100
