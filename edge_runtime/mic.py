"""The one module that imports sounddevice (PortAudio): microphone capture.

The PortAudio callback only copies the block into the preallocated ring (no allocation, no
blocking beyond the ring's short lock); downmix and resampling happen on the encoder worker.
"""

from __future__ import annotations

import logging
import threading

from .audio import AudioInputError, RingBuffer, Source, SourceInfo

log = logging.getLogger(__name__)


class NoMicrophoneError(AudioInputError):
    pass


def _sd():
    try:
        import sounddevice as sd
    except OSError as e:  # libportaudio missing
        raise NoMicrophoneError(f"PortAudio is not available ({e}); install libportaudio2, or pass --input FILE") from None
    return sd


def list_devices() -> list[dict]:
    sd = _sd()
    return [{"index": i, "name": d["name"], "channels": d["max_input_channels"], "rate": d["default_samplerate"]}
            for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]


def find_device(spec: str | int | None) -> dict:
    """By index, by case-insensitive name substring, or the default input device."""
    devices = list_devices()
    if not devices:
        raise NoMicrophoneError("no microphone found (no PortAudio input device); pass --input FILE or --input - for stdin")
    if spec is None:
        sd = _sd()
        idx = sd.default.device[0]
        match = [d for d in devices if d["index"] == idx] or devices[:1]
        return match[0]
    if isinstance(spec, int) or str(spec).isdigit():
        match = [d for d in devices if d["index"] == int(spec)]
    else:
        match = [d for d in devices if str(spec).lower() in d["name"].lower()]
    if not match:
        names = ", ".join(f"{d['index']}: {d['name']}" for d in devices)
        raise NoMicrophoneError(f"no input device matches {spec!r} (have {names})")
    return match[0]


class MicSource(Source):
    def __init__(self, device: str | int | None = None, block_ms: float = 50.0):
        self.device = find_device(device)
        rate = int(self.device["rate"])
        channels = min(2, int(self.device["channels"]))
        self.info = SourceInfo(rate, channels, live=True, name=self.device["name"])
        self.block = max(1, int(rate * block_ms / 1000))
        self.status_flags = 0
        self._stream = None

    def start(self, ring: RingBuffer, stop: threading.Event) -> None:
        sd = _sd()

        def callback(indata, frames, time_info, status):  # PortAudio thread: copy and return
            if status:
                self.status_flags += 1
            ring.write(indata)

        self._stream = sd.InputStream(device=self.device["index"], channels=self.info.channels,
                                      samplerate=self.info.rate, blocksize=self.block, dtype="float32",
                                      callback=callback)
        self._stream.start()
        log.info("capturing from %s at %d Hz, %d ch", self.info.name, self.info.rate, self.info.channels)

        def closer():
            stop.wait()
            self._stream.stop()
            self._stream.close()
            ring.close()

        threading.Thread(target=closer, name="edge-mic-close", daemon=True).start()
