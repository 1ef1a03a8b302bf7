"""Model parts: the vision encoder (`vision`), the Qwen2 decoder (`qwen2`) and the assembled model (`got`)."""
