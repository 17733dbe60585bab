"""Emulate vpmaddubsw (u8 x s8 pairs summed into a saturating int16) on a QDQ CPU graph's real activations."""

import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from engine.spec import ModelSpec
from export.parity import sample_images


def analyse(path, images):
    m = onnx.load(path)
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    convs = []
    for n in g.node:
        if n.op_type != "Conv":
            continue
        dq_x, dq_w = prod.get(n.input[0]), prod.get(n.input[1])
        if not (
            dq_x is not None
            and dq_x.op_type == "DequantizeLinear"
            and dq_w is not None
            and dq_w.input[0] in inits
        ):
            continue
        convs.append(
            (
                n,
                dq_x.input[0],
                inits[dq_x.input[2]] if len(dq_x.input) > 2 else np.uint8(0),
                inits[dq_w.input[0]],
            )
        )
    extra = sorted({c[1] for c in convs})
    qtype = {n.output[0]: inits[n.input[2]].dtype for n in g.node if n.op_type == "QuantizeLinear"}
    for name in extra:
        et = onnx.TensorProto.INT8 if qtype.get(name) == np.int8 else onnx.TensorProto.UINT8
        g.output.append(helper.make_tensor_value_info(name, et, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"images": images}), strict=True))
    total_pairs = total_sat = total_out = total_out_sat = 0
    worst = 0
    for node, xname, zp, w in convs:
        x = outs[xname]
        shift = 128 if x.dtype == np.int8 else 0  # x86 runs s8 activations as u8 (+128)
        x = x.astype(np.int32) + shift
        zp = int(zp) + shift
        a = {at.name: helper.get_attribute_value(at) for at in node.attribute}
        kh, kw = w.shape[2:]
        sh, sw = a.get("strides", [1, 1])
        p = a.get("pads", [0, 0, 0, 0])
        xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])), constant_values=zp)
        N, C, H, W = xp.shape
        Ho = (H - kh) // sh + 1
        Wo = (W - kw) // sw + 1
        cols = np.empty((N, Ho, Wo, kh, kw, C), np.int32)
        for i in range(kh):
            for j in range(kw):
                cols[:, :, :, i, j, :] = xp[:, :, i : i + sh * Ho : sh, j : j + sw * Wo : sw].transpose(
                    0, 2, 3, 1
                )
        A = cols.reshape(-1, kh * kw * C)
        Wm = w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1).astype(np.int32)
        if A.shape[1] % 2:
            A = np.pad(A, ((0, 0), (0, 1)))
            Wm = np.pad(Wm, ((0, 0), (0, 1)))
        sat = 0
        out_sat = 0
        for r in range(0, len(A), 512):
            blk = A[r : r + 512]
            pairs = (
                blk[:, 0::2, None] * Wm.T[None, 0::2] + blk[:, 1::2, None] * Wm.T[None, 1::2]
            )  # (R, K/2, Cout)
            bad = np.abs(pairs) > 32767
            worst = max(worst, int(np.abs(pairs).max()))
            sat += int(bad.sum())
            out_sat += int(bad.any(axis=1).sum())
        total_pairs += A.shape[0] * (A.shape[1] // 2) * Wm.shape[0]
        total_sat += sat
        total_out += A.shape[0] * Wm.shape[0]
        total_out_sat += out_sat
    return len(convs), total_pairs, total_sat, total_out, total_out_sat, worst


spec = ModelSpec.load(sys.argv[1])
imgs = sample_images(spec, "/work/shared/data/viper", count=288)[-int(sys.argv[2]) :]
for path in sys.argv[3:]:
    n, tp, ts, to, tos, worst = analyse(path, imgs)
    print(
        f"{path}: {n} integer convs; pair sums {tp:,}, saturated {ts:,} ({100 * ts / tp:.3f}%); outputs {to:,}, "
        f"with a saturated pair {tos:,} ({100 * tos / to:.2f}%); largest |pair sum| {worst:,} (int16 max 32,767)"
    )
