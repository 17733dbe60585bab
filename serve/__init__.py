"""Top layer: the engine behind a real Triton Inference Server (PyTriton). Imports engine only.

``python -m serve ARTIFACT_DIR [--gallery gallery.npz]``; the wire protocol (model and tensor names)
lives in engine.client so clients need no serve import.
"""
