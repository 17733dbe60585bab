"""Top layer: the engine behind a real Triton Inference Server. Imports engine only.

``python -m serve ARTIFACT_DIR [--gallery gallery.npz]`` runs the tritonserver of the PyTriton wheel on
the artefact's own model repository (serve.server); serve.triton_models are its Python-backend models.
The wire protocol (model and tensor names) lives in engine.client so clients need no serve import.
"""
