"""ganforge training: data, losses, regularizers, the training loop, evaluation and the CLI."""
