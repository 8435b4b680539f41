"""A damaged bundle fails with one line naming the file and the field; the CLIs print no traceback."""

import subprocess
import sys

import pytest

from conftest import edit_manifest, subprocess_env
from edge_runtime.bundle import BundleError, load_manifest
from edge_runtime.model import Bundle


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "edge_export.cli", *args], capture_output=True, text=True,
                       env=subprocess_env(), timeout=120)
    return r.returncode, r.stdout, r.stderr


def _one_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_missing_file(bundle_copy):
    (bundle_copy / "decoder.onnx").unlink()
    with pytest.raises(BundleError, match=r"decoder\.onnx: missing \(listed in manifest.json files.decoder.onnx\)"):
        load_manifest(bundle_copy)
    code, _, err = _cli("verify", str(bundle_copy), "--no-parity")
    assert code == 2 and "decoder.onnx: missing" in _one_line(err)


def test_sha256_mismatch(bundle_copy):
    with open(bundle_copy / "encoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"encoder\.onnx: sha256 mismatch"):
        load_manifest(bundle_copy)
    code, _, err = _cli("verify", str(bundle_copy))
    assert code == 2 and "encoder.onnx: sha256 mismatch" in _one_line(err)


def test_unknown_schema(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m.update(schema="edge-bundle/9"))
    code, _, err = _cli("info", str(bundle_copy))
    line = _one_line(err)
    assert code == 2 and "manifest.json: schema: unsupported version 'edge-bundle/9'" in line


@pytest.mark.parametrize("field,value,needle", [
    ("n_kv_heads", 4, "decoder.n_kv_heads: 4 contradicts"),
    ("n_layers", 3, "decoder.n_layers: 3 contradicts"),
    ("hidden_size", 48, "contradicts"),
])
def test_dims_contradicting_graph(bundle_copy, field, value, needle):
    edit_manifest(bundle_copy, lambda m: m["decoder"].update({field: value}))
    with pytest.raises(BundleError, match=needle):
        Bundle(bundle_copy)
    code, _, err = _cli("verify", str(bundle_copy), "--no-parity")
    assert code == 2 and needle in _one_line(err)


def test_missing_field_and_not_a_bundle(bundle_copy, tmp_path):
    edit_manifest(bundle_copy, lambda m: m.pop("control_tokens"))
    with pytest.raises(BundleError, match="control_tokens: missing"):
        load_manifest(bundle_copy)
    code, _, err = _cli("info", str(tmp_path / "nope"))
    assert code == 2 and "not a bundle directory" in _one_line(err)


def test_corrupt_onnx(bundle_copy):
    (bundle_copy / "decoder.onnx").write_bytes(b"not a model")
    edit_manifest(bundle_copy, lambda m: m["files"].pop("decoder.onnx") and m["files"].update(
        {"decoder.onnx": {"sha256": __import__("hashlib").sha256(b"not a model").hexdigest(), "bytes": 11}}))
    code, _, err = _cli("verify", str(bundle_copy), "--no-parity")
    assert code == 2 and "decoder.onnx: onnxruntime cannot load it" in _one_line(err)


def test_responder_export_names_a_missing_recogniser_before_building_anything(tmp_path):
    """edge-export responder checks both Whisper models' weights before the minute of building the LM."""
    from edge_export.responder_export import export_responder
    from edge_models.responder import DEFAULT_LORA

    with pytest.raises(ValueError, match="unknown Whisper model 'small'"):
        export_responder(DEFAULT_LORA, tmp_path / "responder", asr_second="small")
    assert not (tmp_path / "responder").exists()


@pytest.mark.parametrize("bad", [["The phone is ringing."], {"The phone is ringing.": []}, {"The phone is ringing.": "phone"}])
def test_malformed_alert_words_is_a_one_line_error(bundle_copy, bad):
    edit_manifest(bundle_copy, lambda m: m.update(alert_words=bad))
    with pytest.raises(BundleError, match="alert_words"):
        load_manifest(bundle_copy)
