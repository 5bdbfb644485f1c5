"""Small reference models used by the demo, the trainer and the tests."""

from cafusion.models.small_cnn import SmallCNN
from cafusion.models.timeseries import FCN, InceptionTime, ResNet

__all__ = ["FCN", "InceptionTime", "ResNet", "SmallCNN"]
