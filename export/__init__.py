"""Checkpoint -> ONNX -> FP16 ONNX -> TensorRT plan (+ Triton repository), with measured parity.

Run it as ``python -m export.build_engine CHECKPOINT --out DIR``; the steps (``onnx_from_checkpoint``,
``check_and_simplify``, ``to_fp16``, ``measure_parity``, ``network_from_onnx``, ``serialize_engine``,
``write_triton_repo``) live in their own modules so each can be used and tested alone. Importing this
package imports nothing heavy: torch, onnxruntime and tensorrt are imported by the steps that use them.
"""
