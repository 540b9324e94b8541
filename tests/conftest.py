"""Shared fixtures: tiny random-weight SD pipelines, built once per test session.

Building one takes well under a second, but the oracle tests use them many times; a session scope keeps the suite
fast. Tests must not change these pipelines (no scheduler swaps, no dtype or device moves): make a new pipeline
object around the same modules instead (see ``tests/test_oracle.py``).
"""

from __future__ import annotations

import os

import pytest
import torch

from disentkit.testing import save_tiny_pipeline, tiny_pipeline

# Threads for torch on the CPU. The tiny models (32 channels, 16x16 latents) gain nothing from more, and when other
# processes share the cores (CI runners, parallel test jobs) OpenMP threads that wait for each other made each UNet
# call 10-50x slower in our runs (a 6-step sample: 0.4 s on 1 thread, 5-25 s on 2 threads on a busy 2-core box).
torch.set_num_threads(int(os.environ.get("DISENTKIT_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def sd1_pipe():
    """Tiny SD 1.x-style pipeline (epsilon prediction, DDIM), seed 0."""
    return tiny_pipeline("sd1", seed=0)


@pytest.fixture(scope="session")
def sd2_pipe():
    """Tiny SD 2.x-style pipeline (v-prediction, DDIM), seed 0."""
    return tiny_pipeline("sd2", seed=0)


@pytest.fixture(scope="session")
def sdxl_pipe():
    """Tiny SDXL-style pipeline (two text encoders, pooled embeddings and time ids, DDIM), seed 0."""
    return tiny_pipeline("sdxl", seed=0)


@pytest.fixture(scope="session")
def tiny_pipe_dir(tmp_path_factory):
    """A folder holding the tiny sd1 pipeline (seed 0) as written by ``save_pretrained``."""
    return save_tiny_pipeline("sd1", tmp_path_factory.mktemp("tiny_sd1"), seed=0)
