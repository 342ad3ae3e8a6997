"""Methods built on subspaces, the trainer and the evaluation engine."""
