"""Weight-edit operators: one format per file behind the operator protocol."""
