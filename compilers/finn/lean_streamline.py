"""finn-plus's ResNet streamlining (StreamlinePlus), the same transformations in the same order,
without the cleanups that cannot change anything.

Why: qonnx's ComposedTransformation deep-copies the model before each of its transformations
and, after each, runs the model's cleanup and five more transformations (identity removal,
node and tensor naming, shape and datatype inference: each shape inference serializes the
whole graph), whether that transformation changed the graph or not. StreamlinePlus nests
about 40 transformations, and the whole tree is repeated until nothing changes: on
EfficientNet-Lite (width 1.0, 64x64, 333 nodes) the step took 43 minutes (profiled, shared
CPU), most of it cleaning up graphs no transformation had touched and serializing the 285 MB
of dense depthwise weights LowerConvsToMatMul makes for each shape inference; now about 3.

`lean(tree)` rebuilds a ComposedTransformation tree (FINN's own, e.g. StreamlinePlus()) with
LeanComposed nodes: a transformation that changed nothing is followed by no cleanup, as the
graph is the output of the previous cleanup already (every cleanup transformation is
idempotent); everything else is what ComposedTransformation does. Within resnet_streamline
every InferShapes is InferShapesWithoutWeights (the same shapes, without the weights' data)
and every SortGraph (each cleanup runs one) is SortGraphIndexed (the same order, dict lookups).
tests/test_lean_streamline.py checks that both give the same graph.
"""
from __future__ import annotations

import functools
import math


def lean(transformation):
    """The transformation with every (nested) ComposedTransformation made a LeanComposed."""
    from qonnx.transformation.composed import ComposedTransformation

    if isinstance(transformation, ComposedTransformation):
        return _lean_class()([lean(t) for t in transformation.transformations])
    return transformation


def resnet_streamline(model):
    """finn-plus's step_resnet_streamline (finn.builder.custom_step_library.resnet) with
    lean composed transformations."""
    from finn.transformation.streamline.absorb import (AbsorbAddIntoMultiThreshold,
                                                       AbsorbScalarBiasIntoMultiThreshold,
                                                       AbsorbTransposeIntoMultiThreshold)
    from finn.transformation.streamline.reorder import MoveMulPastAdd
    from finn.transformation.streamline.streamline_plus import StreamlinePlus
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul

    composed, cls = _lean_class(), type(model)
    model = _as(_shape_inferring_class(cls), model)
    model = model.transform(composed([MoveMulPastAdd(), AbsorbScalarBiasIntoMultiThreshold()]))
    model = model.transform(lean(StreamlinePlus()))
    model = model.transform(composed([LowerConvsToMatMul(), AbsorbAddIntoMultiThreshold(),
                                      AbsorbTransposeIntoMultiThreshold()]))
    model = model.transform(lean(StreamlinePlus()))
    return _as(cls, model)


def _as(cls, model):
    """`model` as a `cls` wrapper of the same graph (itself when it is one already)."""
    return model if type(model) is cls else cls(model.model, fix_missing_initializer_valueinfo=False)


# a float initializer this large is a weight or threshold tensor, never the shape data of a
# Reshape/Slice/Pad/Resize/...: shape inference needs only its type and shape
LARGE_INITIALIZER_BYTES = 1 << 16


class InferShapesWithoutWeights:
    """qonnx's InferShapes (the same value_info, outputs and initializer value_info), with the
    large initializers given to ONNX shape inference as typed graph inputs instead of data.
    After FINN lowers depthwise convolutions to dense MatMuls, EfficientNet-Lite's graph holds
    285 MB of weights, and InferShapes serialized all of it about 500 times a streamlining."""

    def apply(self, model):
        import onnx
        from onnx import helper
        from qonnx.transformation.infer_shapes import _hide_finn_ops, _restore_finn_ops

        hidden = _hide_finn_ops(model)
        proto, graph = model.model, model.model.graph
        shell = onnx.GraphProto(name=graph.name)
        for field in ("node", "input", "output", "value_info", "sparse_initializer"):
            getattr(shell, field).extend(getattr(graph, field))
        for init in graph.initializer:
            if init.data_type == onnx.TensorProto.FLOAT and 4 * math.prod(init.dims) > LARGE_INITIALIZER_BYTES:
                shell.input.append(helper.make_tensor_value_info(init.name, init.data_type, init.dims))
            else:
                shell.initializer.append(init)
        inferred = onnx.shape_inference.infer_shapes(helper.make_model(
            shell, ir_version=proto.ir_version, opset_imports=proto.opset_import, functions=proto.functions))
        for field in ("output", "value_info"):
            del getattr(graph, field)[:]
            getattr(graph, field).extend(getattr(inferred.graph, field))
        _restore_finn_ops(model, hidden)
        # qonnx's InferShapes returns a fresh ModelWrapper, which adds the value_info of the
        # initializers missing theirs, in node order (check_all_tensor_shapes_specified, here
        # without its quadratic lookups)
        described = {vi.name for field in (graph.input, graph.output, graph.value_info) for vi in field}
        inits = {init.name: init for init in graph.initializer}
        for node in graph.node:
            for name in [*node.input, *node.output]:
                if name and name not in described and name in inits:
                    init = inits[name]
                    graph.value_info.append(helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
                    described.add(name)
        return type(model)(proto, fix_missing_initializer_valueinfo=False), False


class SortGraphIndexed:
    """qonnx's SortGraph with its lookups in dicts: the same dependency sets, so the same
    toposort order (toposort_flatten sorts each level), and the same errors. qonnx's scans
    every node for the producer of every input (find_direct_predecessors) and the node list
    for its index; every cleanup sorts, so on EfficientNet-Lite's graph of ~600 nodes this
    was most of the streamlining's 475k find_producer calls."""

    def apply(self, model):
        from collections import Counter

        from toposort import toposort_flatten

        graph = model.graph
        if len(graph.node) == 1:
            return model, False
        node_list = list(graph.node)
        producer: dict[str, int] = {}  # find_producer: the first node listing the tensor as an output
        for i, n in enumerate(node_list):
            for t in n.output:
                producer.setdefault(t, i)
        # node_list.index(p): the first node equal to p (message equality)
        first_equal, index_of = {}, []
        for i, n in enumerate(node_list):
            index_of.append(first_equal.setdefault(n.SerializeToString(deterministic=True), i))
        initializers = Counter(x.name for x in graph.initializer)
        inputs = Counter(x.name for x in graph.input)

        def named(counts, name):  # util.get_by_name(...) is not None, raising on duplicates as it does
            if counts[name] > 1:
                raise Exception("Found multiple get_by_name matches, undefined behavior")
            return counts[name] == 1

        dependencies = {}
        for i, n in enumerate(node_list):
            preds = [index_of[producer[t]] for t in n.input if t in producer]
            if not preds:
                if len(n.input) > 0 and any(named(initializers, t) or named(inputs, t) for t in n.input):
                    dependencies[i] = set()
                continue  # floating nodes are dropped, as by SortGraph
            dependencies[i] = set(preds)
        order = toposort_flatten(dependencies)
        for n in node_list:
            graph.node.remove(n)
        for new_idx, sorted_idx in enumerate(order):
            graph.node.insert(new_idx, node_list[sorted_idx])
        return model, False


@functools.cache
def _shape_inferring_class(cls):
    """`cls` whose transform runs InferShapesWithoutWeights wherever qonnx's InferShapes is
    asked for, and SortGraphIndexed wherever SortGraph is (also in model.cleanup())."""
    from qonnx.transformation.general import SortGraph
    from qonnx.transformation.infer_shapes import InferShapes

    class ShapeInferring(cls):
        def transform(self, transformation, *args, **kwargs):
            if type(transformation) is InferShapes:
                transformation = InferShapesWithoutWeights()
            elif type(transformation) is SortGraph:
                transformation = SortGraphIndexed()
            return super().transform(transformation, *args, **kwargs)

    return ShapeInferring


@functools.cache
def _lean_class():
    from qonnx.transformation.base import Transformation
    from qonnx.transformation.general import GiveReadableTensorNames, GiveUniqueNodeNames
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.transformation.remove import RemoveIdentityOps

    class LeanComposed(Transformation):
        """qonnx's ComposedTransformation, cleaning up only after a change (module doc)."""

        def __init__(self, transformations):
            super().__init__()
            self.transformations = transformations

        def apply(self, model):
            modified, dirty = False, True  # the input's state is unknown: clean it once
            cls = type(model)  # a fresh wrapper (InferShapes builds one) keeps the model's class
            for transformation in self.transformations:
                while True:
                    out, changed = transformation.apply(model)
                    model = _as(cls, out)
                    if not changed:
                        break
                    modified = dirty = True
                if dirty:
                    model.cleanup()
                    for step in (RemoveIdentityOps(), GiveUniqueNodeNames(), GiveReadableTensorNames(),
                                 InferShapes(), InferDataTypes()):
                        model = _as(cls, model.transform(step))
                    dirty = False
            return model, modified

    return LeanComposed
