"""cifar-dash: CIFAR-10 from an MLP to an ImageNet ResNet, stage by stage, with real Keras models (no Streamlit in here)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
