"""Deprecated: the native format moved to :mod:`vits_surgery.convert.native`, run housekeeping to :mod:`vits_surgery.surgery.rundir`, ``atomic_write`` to :mod:`vits_surgery._files` (removed in vits_surgery 0.3)."""

from __future__ import annotations

from ._deprecated import moved_names

__getattr__ = moved_names(__name__, {
    **{n: "vits_surgery.convert.native" for n in (
        "FORMAT_VERSION", "MODEL_FILE", "CheckpointError", "save", "load_native", "load_native_with_report",
        "load_state_strict", "read_native")},
    **{n: "vits_surgery.surgery.rundir" for n in (
        "STATE_FILE", "OutDirLock", "save_trainer_state", "load_trainer_state", "checkpoint_dirs",
        "latest_checkpoint", "step_dir", "commit_dir", "prune_checkpoints")},
    "atomic_write": "vits_surgery._files",
})
