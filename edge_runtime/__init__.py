"""edge-runtime: run audio interaction model bundles on a live stream."""
__version__ = "0.1.0"
