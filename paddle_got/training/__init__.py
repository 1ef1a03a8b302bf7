"""Post-training: arguments (YAML + command line), the paddlenlp Trainer wiring, freezing and LoRA."""
