"""Model registry and models (see quant/models/registry.py for the API, layers.py for quantizers).

    create_model(name, num_classes, in_size=(H, W), width=1.0, weight_bits=4, act_bits=4,
                 input_bits=8, quantized=True) -> nn.Module
    list_models(pattern="*") -> list[str];  model_info(name) -> ModelInfo
    check_fpga(model): UserError unless FINN can lower it (FPGA model, quantized)
    load_float_weights(qat_model, float_state) -> TransferReport  (float pre-training -> QAT)
"""
from quant.models.registry import ModelInfo, check_fpga, create_model, list_models, model_info, register_model
from quant.models import effnet_b0, effnet_lite, resnet, segdec  # noqa: F401  (registers the entrypoints)
from quant.models.transfer import TransferReport, load_float_weights

__all__ = ["ModelInfo", "TransferReport", "check_fpga", "create_model", "list_models", "load_float_weights",
           "model_info", "register_model"]
