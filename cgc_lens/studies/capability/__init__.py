"""The capability study."""
