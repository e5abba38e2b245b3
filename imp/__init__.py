"""imp: Integrated Multimodal Perception in JAX (seed 004)."""

import os

# TensorFlow is only our input pipeline: keep its C++ start-up chatter off the terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
