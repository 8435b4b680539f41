"""The wheel holds what an installed (not editable) package needs: the default bundle, the demo
stream, the responder's LoRA and every training recipe (edge-train reads its default config
from the package)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_the_bundle_the_lora_and_the_recipes(tmp_path):
    # from a copy of the tracked files only: a checkout's *.egg-info (an editable install's file
    # list) would otherwise hand setuptools what setup.cfg forgot
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for f in filter(None, (x.decode() for x in files)):
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path), str(src)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = {p.name for p in (ROOT / "models" / "recipes").glob("*.json")}
    assert recipes and {f"edge_models/recipes/{n}" for n in recipes} <= names
    bundle = {p.name for p in (ROOT / "edge_runtime" / "bundles" / "default").iterdir()}
    assert {f"edge_runtime/bundles/default/{n}" for n in bundle} <= names
    assert {"edge_runtime/bundles/demo.wav", "edge_models/weights/responder-lora.npz",
            "edge_models/data/teacher_wording.json"} <= names
