"""Bridges to other libraries (torchvision) and to files (weights); each optional dependency is imported lazily."""
