"""The demo stream shipped with the runtime (``edge_runtime/bundles/demo.wav``): one minute of a
household, spoken by held-out voices (flite and festival kal, never heard in training) with
synthesized sounds from seeds no training stream used.

    python -m edge_models.demo OUT_DIR     -> OUT_DIR/demo.wav, OUT_DIR/demo.json

demo.json holds the script and, per instruction, the responses it asks for.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import soundfile as sf

from . import scenarios as sc
from .streams import scripted_stream
from .synth import SR, Voice

SLT, RMS, AWB, KAL = Voice("flite", "slt"), Voice("flite", "rms"), Voice("flite", "awb"), Voice("festival-kal", "kal")

SCRIPT = [
    ("speech", "Hey Edge, turn on the kitchen lights", SLT, "Turning on the kitchen lights."),
    ("speech", "did you remember to buy bread", RMS, None),
    ("sound", "doorbell"),
    ("speech", "put the glass away from the edge of the table", KAL, None),
    ("speech", "Edge, set a timer for ten minutes", AWB, "Setting a timer for ten minutes."),
    ("sound", "music"),
    ("speech", "Sam, turn off the bedroom lights", SLT, None),
    ("sound", "smoke_alarm"),
    ("speech", "Edge, order a pizza", RMS, sc.SORRY),
    ("sound", "knocking"),
    ("speech", "Edge, what time is it", KAL, "Checking the time."),
]
INSTRUCTIONS = {
    "combined": sc.DEFAULT_INSTRUCTION,
    "assistant": sc.INSTRUCTIONS["assistant"][0],
    "alerts": "Tell me if the doorbell or the smoke alarm goes off.",
    "transcribe": sc.TRANSCRIBE_INSTRUCTION,
}
WATCH = {"combined": list(sc.SOUND_CLASSES), "assistant": [], "alerts": ["doorbell", "smoke_alarm"], "transcribe": []}
SEED = 7


def build(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    info: dict = {"sample_rate": SR, "instructions": {}}
    audio = None
    for mode, instr in INSTRUCTIONS.items():
        s = scripted_stream(SCRIPT, SEED, mode, WATCH[mode], instr)
        if audio is None:
            audio = s.audio
            info["duration"] = round(s.duration, 2)
            info["events"] = [{"kind": e.kind, "start": e.start, "end": e.end, "what": e.what} for e in s.events]
        info["instructions"][mode] = {"instruction": instr, "stream": s.to_dict()}
    sf.write(out / "demo.wav", audio, SR, subtype="PCM_16")
    (out / "demo.json").write_text(json.dumps(info, indent=1))
    return info


if __name__ == "__main__":
    info = build(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
    print(f"demo: {info['duration']} s, {len(info['events'])} events")
