"""vits_surgery: surgical fine-tuning for VITS text-to-speech.

Load a trained voice, freeze it, and retrain only chosen components ("organs") on a
donor speaker's data. Heavy submodules (torch models, converters, the trainer) are
imported lazily on first use, so ``import vits_surgery`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute"
_LAZY = {
    "VITSConfig": "vits_surgery.config:VITSConfig",
    "preset": "vits_surgery.config:preset",
    "PRESETS": "vits_surgery.config:PRESETS",
    "VITS": "vits_surgery.models.vits:VITS",
    "ComponentRegistry": "vits_surgery.surgery.registry:ComponentRegistry",
    "SurgeryPlan": "vits_surgery.surgery.plan:SurgeryPlan",
    "SurgicalTrainer": "vits_surgery.surgery.trainer:SurgicalTrainer",
    "load": "vits_surgery.convert:load",
    "save": "vits_surgery.checkpoint:save",
    "export": "vits_surgery.convert:export",
    "convert": "vits_surgery.convert:convert",
    "ConversionReport": "vits_surgery.convert.report:ConversionReport",
    "regrow": "vits_surgery.surgery.regrow:regrow",
    "Tokenizer": "vits_surgery.text.tokenizer:Tokenizer",
    "maximum_path": "vits_surgery.align:maximum_path",
    "TextAudioDataset": "vits_surgery.data:TextAudioDataset",
    "make_loader": "vits_surgery.data:make_loader",
    "ListeningCallback": "vits_surgery.surgery.listening:ListeningCallback",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'vits_surgery' has no attribute {name!r}")
    module_name, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
