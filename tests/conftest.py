"""Shared test set-up: small models run fastest on one thread (and leave the other core to the rest)."""

from __future__ import annotations

import os

import torch

torch.set_num_threads(int(os.environ.get("VITS_SURGERY_TEST_THREADS", "1")))
