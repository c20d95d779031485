"""Pure analyses: arrays in, dataclasses or arrays out. Nothing here touches a model."""

__all__: list[str] = []
