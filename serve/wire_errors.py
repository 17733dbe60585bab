"""What a client sees when a request fails: one line, HTTP 400 / gRPC INVALID_ARGUMENT for a bad request.

PyTriton's model stub (the ``model.py`` it copies into Triton's model repository and runs in Triton's
Python backend) turns every exception of an inference callable into ``TritonModelException("Model
execute error: <traceback>")``, which Triton sends as HTTP 500 with the traceback and the server's
file paths in the body. The callables in serve.models already say what is wrong in one sentence
(a PyTritonBadParameterError carrying the engine's message), so ``install`` appends to that stub a
subclass whose ``execute`` answers each request of a failed batch with that sentence and the
INVALID_ARG code (HTTP 400), and anything else with a fixed line and the INTERNAL code (HTTP 500).
The traceback stays in the server's log (PyTriton logs it before it reaches the stub).

It appends rather than edits, so it relies only on the Python backend's API (``TritonPythonModel``,
``pb_utils``) and on the class name the PyTriton error carries.
"""
from __future__ import annotations

from typing import Any

INTERNAL_LINE = "the server failed on this request; its log has the details"

STUB = f'''

# ---- appended by jlml-engine (serve/wire_errors.py): one-line errors, 400 for a bad request ----
_JLML_BAD_REQUEST = "PyTritonBadParameterError: "


def _jlml_error(exc):
    lines = [line for line in str(exc).splitlines() if _JLML_BAD_REQUEST in line]
    if lines:
        reason = lines[-1].split(_JLML_BAD_REQUEST, 1)[1].strip()
        return pb_utils.TritonError(reason, code=pb_utils.TritonError.INVALID_ARG)
    return pb_utils.TritonError({INTERNAL_LINE!r}, code=pb_utils.TritonError.INTERNAL)


class TritonPythonModel(TritonPythonModel):  # noqa: F811 - the backend instantiates this name
    def execute(self, triton_requests):
        try:
            return super().execute(triton_requests)
        except pb_utils.TritonModelException as exc:
            error = _jlml_error(exc)
            return [pb_utils.InferenceResponse(error=error) for _ in triton_requests]
'''
_MODEL_FILE = "model.py"


def install(model_cls: Any) -> None:
    """Make PyTriton's ``Model`` (``pytriton.models.model.Model``) ship the stub with ``STUB`` appended,
    whether it writes a local model repository or sends the files to Triton; idempotent."""
    if getattr(model_cls, "_jlml_wire_errors", False):
        return
    files, generate = model_cls.get_proxy_model_files, model_cls.generate_model

    def get_proxy_model_files(self: Any) -> dict[str, bytes]:
        out = files(self)
        key = f"file:{self.model_version}/{_MODEL_FILE}"
        out[key] = out[key] + STUB.encode()
        return out

    def generate_model(self: Any, model_repository: Any) -> None:
        generate(self, model_repository)
        stub = model_repository / self.model_name / str(self.model_version) / _MODEL_FILE
        stub.write_text(stub.read_text() + STUB)

    model_cls.get_proxy_model_files, model_cls.generate_model = get_proxy_model_files, generate_model
    model_cls._jlml_wire_errors = True
