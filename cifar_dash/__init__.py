"""cifar-dash: CIFAR-10 from a 46% MLP to 94%, stage by stage, with real Keras models (no Streamlit in here)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
