"""Small reference models used by the demo, the trainer and the tests."""

from cafusion.models.small_cnn import SmallCNN

__all__ = ["SmallCNN"]
