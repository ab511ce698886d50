"""Running FF training: the model built from a config (`model`), THE epoch loop (`loop`) and its sequential
runner (`sequential`), checkpoints, the metrics.jsonl records, the console, plots and measurements."""
