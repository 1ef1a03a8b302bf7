"""Training data: annotations and meta files, the dataset with label masking, the collator, data preparation."""
