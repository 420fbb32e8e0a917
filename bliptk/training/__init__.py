"""Fine-tuning: options, data, the output folder, the run on transformers' Trainer."""
