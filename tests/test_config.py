"""Config validation, presets and JSON round trips."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vits_surgery.config import PRESETS, ConfigError, VITSConfig, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_json_round_trip(name: str, tmp_path) -> None:
    cfg = preset(name)
    path = tmp_path / "config.json"
    cfg.to_json(path)
    assert VITSConfig.from_json(path) == cfg
    assert VITSConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(path.read_text())["name"] == name


def test_hop_length_must_equal_upsampling_product() -> None:
    with pytest.raises(ConfigError) as err:
        preset("tiny", **{"audio.hop_length": 128, "audio.n_fft": 256})
    msg = str(err.value)
    assert "64" in msg and "128" in msg and "upsample_rates" in msg


def test_unknown_key_is_named_with_suggestion() -> None:
    data = preset("tiny").to_dict()
    data["decoder"]["upsample_rate"] = [4, 4, 4]
    with pytest.raises(ConfigError, match=r"decoder\.upsample_rate.*did you mean 'decoder\.upsample_rates'"):
        VITSConfig.from_dict(data)


def test_wrong_types_and_lengths_are_errors() -> None:
    data = preset("tiny").to_dict()
    data["text_encoder"]["n_layers"] = "six"
    with pytest.raises(ConfigError, match="text_encoder.n_layers"):
        VITSConfig.from_dict(data)
    with pytest.raises(ConfigError, match="n_heads"):
        preset("tiny", **{"text_encoder.n_heads": 3})
    with pytest.raises(ConfigError, match="same length"):
        preset("tiny", **{"decoder.upsample_kernel_sizes": (8, 8)})


def test_unknown_preset_suggests() -> None:
    with pytest.raises(ConfigError, match="tiny"):
        preset("tinny")


def test_coqui_preset_matches_coqui_defaults() -> None:
    cfg = preset("coqui_vits")
    # coqui-tts 0.28.0 VitsConfig(): 67 graphemes, 192 hidden, 6 layers, ffn 768, hop 256.
    assert cfg.text_encoder.n_vocab == 67
    assert (cfg.text_encoder.hidden_channels, cfg.text_encoder.n_layers, cfg.text_encoder.filter_channels) == (192, 6, 768)
    assert cfg.decoder.upsample_rates == (8, 8, 2, 2) and cfg.audio.hop_length == 256
    assert cfg.posterior_encoder.n_layers == 16 and cfg.flow.n_flows == 4
    assert cfg.noise_scale_w == 1.0


def test_import_is_light() -> None:
    code = "import sys, vits_surgery; print('torch' in sys.modules, 'numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_every_public_name_resolves() -> None:
    import vits_surgery

    missing = [n for n in vits_surgery.__all__ if n != "__version__" and getattr(vits_surgery, n, None) is None]
    assert missing == []
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vits_surgery.nope  # noqa: B018


def test_convert_stays_the_function_after_submodule_imports() -> None:
    import vits_surgery
    import vits_surgery.convert.keymap  # noqa: F401

    assert callable(vits_surgery.convert) and vits_surgery.convert.__name__ == "convert"
