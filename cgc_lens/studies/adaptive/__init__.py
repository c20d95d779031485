"""The adaptive study."""
