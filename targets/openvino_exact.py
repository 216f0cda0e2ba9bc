"""The OpenVINO IR's exact semantics on any CPU: every FakeQuantize as its formula in fp32.

OpenVINO's CPU plugin turns FakeQuantize -> Convolution into u8 x s8 integer kernels. On a CPU
with VNNI or AMX they accumulate exactly (like the NPU); on one without (AVX2 only) pairs of
products saturate in int16 (core.machine), and the CPU computes something the NPU never will.
`decompose_fake_quantize` rewrites a loaded ov.Model so that each FakeQuantize is computed
element-wise as the OpenVINO specification defines it,

    q = round((clamp(x, il, ih) - il) / (ih - il) * (levels - 1))        (half to even)
    y = q / (levels - 1) * (oh - ol) + ol

which no plugin fuses into an integer kernel, and every int8 weight constant (Convert ->
Multiply by its scale) is stored as the same integers in fp32 (the CPU plugin's int8-weight
"decompression" kernels exist only for some ISAs). The convolutions then run in fp32 on values
that are exactly the integer grid, so the result is the IR's own arithmetic, identical on
every ISA up to float32 summation order. It reads the IR; it never rewrites the artifact.
"""
from __future__ import annotations


def decompose_fake_quantize(model):
    """Replace every FakeQuantize of `model` (ov.Model, modified in place) by its formula.
    Returns the number replaced."""
    import numpy as np
    import openvino.opset13 as ops

    replaced = 0
    for node in list(model.get_ordered_ops()):
        if node.get_type_name() != "FakeQuantize":
            continue
        x, il, ih, ol, oh = (node.input_value(i) for i in range(5))
        levels = int(node.get_attributes()["levels"])
        steps = ops.constant(np.float32(levels - 1))
        lo, hi = ops.minimum(il, ih), ops.maximum(il, ih)
        clamped = ops.minimum(ops.maximum(x, lo), hi)
        q = ops.round(ops.multiply(ops.divide(ops.subtract(clamped, il), ops.subtract(ih, il)), steps),
                      "half_to_even")
        y = ops.add(ops.multiply(ops.divide(q, steps), ops.subtract(oh, ol)), ol)
        y.set_friendly_name(node.get_friendly_name())
        for target in list(node.output(0).get_target_inputs()):
            target.replace_source_output(y.output(0))
        replaced += 1
    for node in list(model.get_ordered_ops()):
        source = node.input_value(0).get_node() if node.get_input_size() else None
        if node.get_type_name() == "Convert" and source is not None and source.get_type_name() == "Constant":
            values = source.get_data().astype(np.float32)  # int8 / uint8: exact in fp32
            if node.get_output_element_type(0).get_type_name() != "f32":
                continue
            node.output(0).replace(ops.constant(values).output(0))
    if replaced:
        model.validate_nodes_and_infer_types()
    return replaced
