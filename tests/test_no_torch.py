"""The runtime imports and runs a bundle where torch cannot be imported."""

import subprocess
import sys

from conftest import subprocess_env

BLOCK = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch.") or name == "transformers":
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
"""


def test_runtime_without_torch(tiny_bundle):
    code = BLOCK + f"""
import numpy as np
import edge_runtime
from edge_runtime.model import Bundle, EncoderStream
from edge_runtime.responder import Responder, ResponderWorker, SpeechTrail  # the responder stage needs no torch either
from edge_export.check import verify
b = Bundle({str(tiny_bundle[0])!r})
s = EncoderStream(b)
w = s.push(np.zeros(16000, np.float32))
emb = b.encode_windows(np.stack(w))
cache = b.decoder.new_cache()
logits = b.decoder.forward(cache, np.concatenate([b.embed([5, 6]), emb[0]]))
assert np.isfinite(logits).all()
r = verify({str(tiny_bundle[0])!r})
assert "parity" not in r
try:
    import torch
except ImportError:
    print("OK no torch")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "OK no torch" in r.stdout
