"""vits_surgery: surgical fine-tuning for VITS text-to-speech.

Load a trained voice, freeze it, and retrain only chosen components ("organs") on a
donor speaker's data. Heavy submodules (torch models, converters, the trainer) are
imported lazily on first use, so ``import vits_surgery`` stays fast.
"""

from __future__ import annotations

from ._lazy import lazy_attributes

__version__ = "0.1.0"

# public name -> "module:attribute"
_LAZY = {
    "VITSConfig": "vits_surgery.config:VITSConfig",
    "preset": "vits_surgery.config:preset",
    "PRESETS": "vits_surgery.config:PRESETS",
    "VITS": "vits_surgery.models.vits:VITS",
    "optimize_for_inference": "vits_surgery.models.inference:optimize_for_inference",
    "ComponentRegistry": "vits_surgery.surgery.registry:ComponentRegistry",
    "SurgeryPlan": "vits_surgery.surgery.plan:SurgeryPlan",
    "SurgicalTrainer": "vits_surgery.surgery.trainer:SurgicalTrainer",
    "load": "vits_surgery.convert:load",
    "save": "vits_surgery.convert.native:save",
    "export": "vits_surgery.convert:export",
    "export_onnx": "vits_surgery.convert.onnx_export:export_onnx",
    "ConversionReport": "vits_surgery.convert.report:ConversionReport",
    "regrow": "vits_surgery.regrowth:regrow",
    "RegrowOptions": "vits_surgery.regrowth.options:RegrowOptions",
    "Tokenizer": "vits_surgery.text.tokenizer:Tokenizer",
    "maximum_path": "vits_surgery.align:maximum_path",
    "donor_durations": "vits_surgery.durations.api:donor_durations",
    "TextAudioDataset": "vits_surgery.data:TextAudioDataset",
    "make_loader": "vits_surgery.data:make_loader",
    "ListeningCallback": "vits_surgery.surgery.listening:ListeningCallback",
    "TrainConfig": "vits_surgery.surgery.trainer:TrainConfig",
    "LossTerm": "vits_surgery.loss_terms:LossTerm",
    "MultiResolutionSTFTLoss": "vits_surgery.loss_terms:MultiResolutionSTFTLoss",
    "register_loss_term": "vits_surgery.loss_terms:register_loss_term",
    "LoRASpec": "vits_surgery.models.lora:LoRASpec",
    "inject_lora": "vits_surgery.surgery.lora:inject_lora",
    "merge_lora": "vits_surgery.models.lora:merge_lora",
    "Patch": "vits_surgery.surgery.patch:Patch",
    "make_patch": "vits_surgery.surgery.patch:make_patch",
    "apply_patch": "vits_surgery.surgery.patch:apply_patch",
    "swap": "vits_surgery.surgery.swap:swap",
    "blend": "vits_surgery.surgery.swap:blend",
    "build_report": "vits_surgery.report:build_report",
    "relative_gradient_norms": "vits_surgery.surgery.auto:relative_gradient_norms",
    "auto_plan": "vits_surgery.surgery.autoplan:auto_plan",
    "preserved": "vits_surgery.surgery.freeze:preserved",
    "RGNReport": "vits_surgery.surgery.auto:RGNReport",
    "RejectionMonitor": "vits_surgery.surgery.monitor:RejectionMonitor",
    # the subpackage ``vits_surgery.diagnose`` holds ``diagnose``; the top-level name differs so
    # that importing the subpackage cannot shadow the function
    "diagnose_donor": "vits_surgery.diagnose.run:diagnose",
    "Diagnosis": "vits_surgery.diagnose.run:Diagnosis",
}

# ``convert`` is both a subpackage and a public function: bind the function eagerly (the
# subpackage's __init__ is light), so importing ``vits_surgery.convert.*`` later cannot
# replace it with the module.
from .convert import convert  # noqa: E402

__all__ = ["__version__", "convert", *_LAZY]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
