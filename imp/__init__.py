"""imp: Integrated Multimodal Perception in JAX (seed 004)."""

import os

# TensorFlow is only our input pipeline: keep its C++ start-up chatter off the terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# oneDNN speeds TF's dense math, which the input pipeline does not use; off, it also stops
# TF announcing it on every start.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
