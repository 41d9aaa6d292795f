import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from qgraph import weights
from qgraph.bundle import MANIFEST, Bundle
from qgraph.errors import BundleError
from tests.conftest import small_model


def test_round_trip_and_manifest(small_onnx: Path):
    manifest = json.loads((small_onnx / MANIFEST).read_text())
    assert manifest["format_version"] == 1 and manifest["family"] == "test"
    comp = manifest["components"]["small"]
    assert comp["file"] == "small.onnx" and comp["data_file"] == "small.onnx.data"
    assert comp["inputs"] == [{"name": "x", "dtype": "FLOAT", "shape": ["batch", 64]}]
    assert set(manifest["files"]) == {"small.onnx", "small.onnx.data", "config.json"}
    for rel, info in manifest["files"].items():
        assert weights.file_digest(small_onnx / rel) == info
    assert {"qgraph", "onnx", "onnx_ir", "onnxruntime"} <= set(manifest["tools"])
    bundle = Bundle.load(small_onnx)
    assert bundle.read_json("config.json") == {"hello": 1}
    w = bundle.components["small"].graph.initializers["w"].const_value
    np.testing.assert_array_equal(
        w.numpy(), small_model().graph.initializers["w"].const_value.numpy()
    )


def test_large_tensors_are_aligned(small_onnx: Path):
    proto = onnx.load(str(small_onnx / "small.onnx"), load_external_data=False)
    (t,) = list(weights.external_tensors(proto))
    info = {e.key: e.value for e in t.external_data}
    assert int(info.get("offset", 0)) % weights.SMALL_ALIGNMENT == 0


def test_single_file_and_plain_folder(small_onnx: Path, tmp_path: Path):
    single = Bundle.load(small_onnx / "small.onnx")
    assert list(single.components) == ["small"] and single.side_files == {}
    (small_onnx / MANIFEST).unlink()
    folder = Bundle.load(small_onnx)
    assert list(folder.components) == ["small"]
    assert list(folder.side_files) == ["config.json"]  # the .data file is not a side file


def test_shared_data_file_writes_each_tensor_once(tmp_path: Path):
    a = small_model()
    b = small_model()
    # b reads the very same tensor object as a: it must be written once
    b.graph.initializers["w"].const_value = a.graph.initializers["w"].const_value
    bundle = Bundle()
    bundle.add_component("a", a)
    bundle.add_component("b", b)
    bundle.data_files = {"a": "shared.data", "b": "shared.data"}
    out = bundle.save(tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == [
        "a.onnx",
        "b.onnx",
        "qgraph.json",
        "shared.data",
    ]
    assert (out / "shared.data").stat().st_size == 64 * 64 * 4
    again = Bundle.load(out)
    assert again.data_files == {"a": "shared.data", "b": "shared.data"}


def test_existing_output_is_refused_then_replaced(small_onnx: Path, tmp_path: Path):
    bundle = Bundle.load(small_onnx)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(BundleError, match="already exists"):
        bundle.save(out)
    bundle.save(out, overwrite=True)
    assert not (out / "keep").exists() and (out / "small.onnx").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_output_inside_input_is_refused(small_onnx: Path):
    with pytest.raises(BundleError, match="must not be the input"):
        Bundle.load(small_onnx).save(small_onnx / "sub")


def test_failed_save_leaves_nothing(small_onnx: Path, tmp_path: Path, monkeypatch):
    bundle = Bundle.load(small_onnx)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(weights, "save_models", boom)
    with pytest.raises(KeyboardInterrupt):
        bundle.save(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]


def _corrupt(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_corrupt_and_truncated_models(tmp_path: Path, small_onnx: Path):
    with pytest.raises(BundleError, match="not a readable ONNX model"):
        Bundle.load(_corrupt(tmp_path / "bad.onnx", b"\x08\x07garbage\xff\xff\xff"))
    raw = (small_onnx / "small.onnx").read_bytes()
    with pytest.raises(BundleError, match="not a readable ONNX model"):
        Bundle.load(_corrupt(tmp_path / "trunc.onnx", raw[: len(raw) // 2]))


def test_missing_and_short_external_data(small_onnx: Path):
    data = small_onnx / "small.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(BundleError, match="too short.*truncated"):
        Bundle.load(small_onnx)
    data.unlink()
    with pytest.raises(BundleError, match="external data file small.onnx.data .* is missing"):
        Bundle.load(small_onnx)


@pytest.mark.parametrize("location", ["../../x.data", "/etc/passwd", "sub/../../x.data"])
def test_external_data_may_not_escape(small_onnx: Path, location: str):
    path = small_onnx / "small.onnx"
    proto = onnx.load(str(path), load_external_data=False)
    for t in weights.external_tensors(proto):
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(BundleError, match="absolute path|escapes the bundle folder"):
        Bundle.load(small_onnx)


def test_folder_without_model(tmp_path: Path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(BundleError, match="no .onnx model"):
        Bundle.load(tmp_path)
    with pytest.raises(BundleError, match="no such file"):
        Bundle.load(tmp_path / "nope")


def test_unwritable_output(small_onnx: Path, tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(BundleError, match="cannot write"):
        Bundle.load(small_onnx).save(blocker / "out")


def test_manifest_path_escape_is_refused(small_onnx: Path):
    manifest = json.loads((small_onnx / MANIFEST).read_text())
    manifest["side_files"] = ["../outside.txt"]
    (small_onnx / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="escapes"):
        Bundle.load(small_onnx)
    assert os.path.exists(small_onnx / "small.onnx")
