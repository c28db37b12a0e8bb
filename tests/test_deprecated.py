"""Every public name that moved or changed keeps working for one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("old_module, name, new_module, new_name", [
    ("vits_surgery.checkpoint", "save", "vits_surgery.convert.native", "save"),
    ("vits_surgery.checkpoint", "read_native", "vits_surgery.convert.native", "read_native"),
    ("vits_surgery.checkpoint", "CheckpointError", "vits_surgery.convert.native", "CheckpointError"),
    ("vits_surgery.checkpoint", "OutDirLock", "vits_surgery.surgery.rundir", "OutDirLock"),
    ("vits_surgery.checkpoint", "latest_checkpoint", "vits_surgery.surgery.rundir", "latest_checkpoint"),
    ("vits_surgery.checkpoint", "atomic_write", "vits_surgery._files", "atomic_write"),
    ("vits_surgery.surgery.progress", "ProgressBar", "vits_surgery.surgery.callbacks", "ProgressBar"),
    ("vits_surgery.surgery.runlog", "RunLogger", "vits_surgery.surgery.callbacks", "RunLogger"),
    ("vits_surgery.surgery.runlog", "read_metrics", "vits_surgery.surgery.callbacks", "read_metrics"),
    ("vits_surgery.surgery.regrow", "regrow", "vits_surgery.regrowth.core", "regrow"),
    ("vits_surgery.surgery.regrow", "Utterance", "vits_surgery.regrowth.teacher", "TeacherUtterance"),
    ("vits_surgery.surgery.regrow_data", "duration_recovery", "vits_surgery.regrowth.metrics", "duration_recovery"),
    ("vits_surgery.surgery.regrow_fit", "sdp_nll_per_token", "vits_surgery.regrowth.metrics", "sdp_nll_per_token"),
    ("vits_surgery.surgery.plan", "StepPlan", "vits_surgery.surgery.step", "StepPlan"),
])
def test_moved_names_warn_and_resolve(old_module, name, new_module, new_name) -> None:
    old = importlib.import_module(old_module)
    with pytest.warns(DeprecationWarning, match=rf"{old_module}\.{name} is deprecated.*{new_name}"):
        value = getattr(old, name)
    assert value is getattr(importlib.import_module(new_module), new_name)


def test_unknown_names_of_a_moved_module_are_attribute_errors() -> None:
    old = importlib.import_module("vits_surgery.checkpoint")
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        old.nothing  # noqa: B018


def test_renamed_keywords_and_attributes_warn(tmp_path) -> None:
    from surgery_helpers import tiny_model

    from vits_surgery.surgery.plan import SurgeryPlan
    from vits_surgery.surgery.trainer import SurgicalTrainer, TrainConfig

    with pytest.warns(DeprecationWarning, match="sample_every"):
        TrainConfig(sample_every=5)
    trainer = SurgicalTrainer(tiny_model(), SurgeryPlan.cadence(), [], out_dir=tmp_path,
                              config=TrainConfig(progress=False))
    with pytest.warns(DeprecationWarning, match="rng"):
        assert trainer.generator is trainer.rng
    with pytest.warns(DeprecationWarning, match="listener"):
        SurgicalTrainer(tiny_model(), SurgeryPlan.cadence(), [], out_dir=tmp_path / "l",
                        config=TrainConfig(progress=False), listener=lambda trainer, step: None)
