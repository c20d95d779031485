"""The survival study."""
