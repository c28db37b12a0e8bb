"""Datasets, readers, caches, length-bucketed sampling and collate.

Typical use::

    from vits_surgery.data import read_items, TextAudioDataset, make_loader

    items = read_items("LJSpeech-1.1", formatter="ljspeech")
    data = TextAudioDataset(items, model.config, cache_dir="cache/ljs")
    print(data.report)                     # kept / skipped per reason / resampled ...
    loader = make_loader(data, batch_size=16, seed=1234)
    for batch in loader:                   # vits_surgery.batch.Batch
        ...
    state = loader.state_dict()            # exact data position for resume
"""

from __future__ import annotations

from .cache import CACHE_VERSION, FeatureCache, file_digest, fingerprint
from .dataset import Sample, TextAudioDataset
from .loader import BucketSampler, ResumableLoader, collate, make_loader
from .readers import (
    FORMATTERS,
    Utterance,
    from_pairs,
    read_coqui_csv,
    read_items,
    read_ljspeech,
    read_ljspeech_test,
    read_speaker_csv,
    read_vctk,
    read_vctk_old,
)
from .report import SKIP_REASONS, DataError, DatasetReport

__all__ = [
    "Utterance",
    "read_items",
    "read_ljspeech",
    "read_ljspeech_test",
    "read_vctk",
    "read_vctk_old",
    "read_coqui_csv",
    "read_speaker_csv",
    "from_pairs",
    "FORMATTERS",
    "DatasetReport",
    "DataError",
    "SKIP_REASONS",
    "FeatureCache",
    "CACHE_VERSION",
    "file_digest",
    "fingerprint",
    "Sample",
    "TextAudioDataset",
    "BucketSampler",
    "ResumableLoader",
    "collate",
    "make_loader",
]
