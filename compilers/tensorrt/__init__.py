"""TensorRT INT8 (explicit quantization): QDQ ONNX in the layout TensorRT builds from.

    finalize_qdq(onnx_in, onnx_out, batch=None) -> FinalizeReport   (qdq_export)
    check_trt_layout(model_or_path) -> LayoutReport                 (qdq_layout)
    write_trt_commands(onnx_path, ...) -> TrtCommands                (commands)

    build_engine(onnx_path, engine_path, ...) -> EngineBuild           (engine; needs tensorrt)

tensorrt is imported lazily (engine.py), so everything here imports on any machine.
Running an engine is targets/tensorrt_runner.py.
"""
from compilers.tensorrt.commands import TrtCommands, write_trt_commands
from compilers.tensorrt.qdq_export import FinalizeReport, finalize_qdq
from compilers.tensorrt.qdq_layout import LayoutReport, check_trt_layout

__all__ = [
    "FinalizeReport",
    "LayoutReport",
    "TrtCommands",
    "check_trt_layout",
    "finalize_qdq",
    "write_trt_commands",
]
