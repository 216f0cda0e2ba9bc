"""The training loop's selection rule and its QAT BatchNorm freeze, on a small synthetic set."""
import numpy as np
import pytest
import torch

from qdeploy.recipe import DatasetConfig, TrainConfig
from quant.data.splits import load_splits
from quant.models import create_model, load_float_weights
from quant.train import _nll, fit


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cfg = DatasetConfig(kind="synthetic", size=(16, 16), num_images=120, path=None)
    return load_splits(cfg, 0, tmp_path_factory.mktemp("data"))


def _bn_stats(model):
    return [(m.running_mean.clone(), m.running_var.clone()) for m in model.modules()
            if isinstance(m, torch.nn.BatchNorm2d)]


def test_frozen_batchnorm_keeps_its_statistics_while_weights_train(small, one_torch_thread):
    torch.manual_seed(0)
    model = create_model("resnet8", 2, (16, 16), width=0.5, quantized=False)
    before, weights = _bn_stats(model), model.fc.weight.detach().clone()
    fit(model, small, TrainConfig(patience=5), epochs=2, lr=1e-2, seed=0, label="frozen", freeze_bn_from=0)
    assert all(torch.equal(a, b) and torch.equal(c, d) for (a, c), (b, d) in zip(before, _bn_stats(model)))
    assert not torch.equal(weights, model.fc.weight)  # it did train
    fit(model, small, TrainConfig(patience=5), epochs=1, lr=1e-2, seed=0, label="live")
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(before, _bn_stats(model)))


def test_brevitas_qat_with_frozen_batchnorm_from_a_float_model(small, one_torch_thread):
    torch.manual_seed(0)
    float_model = create_model("resnet8", 2, (16, 16), width=0.5, quantized=False)
    fit(float_model, small, TrainConfig(patience=5), epochs=1, lr=1e-2, seed=0, label="float")
    qat = create_model("resnet8", 2, (16, 16), width=0.5)
    load_float_weights(qat, float_model)
    before = _bn_stats(qat)
    hist = fit(qat, small, TrainConfig(patience=5), epochs=2, lr=1e-3, seed=1, label="qat", freeze_bn_from=1)
    after = _bn_stats(qat)
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(before, after))  # epoch 1 still updated them
    assert len(hist["epochs"]) == 2 and np.isfinite(hist["best_val_nll"])


def test_the_tie_breaker_is_the_mean_cross_entropy():
    labels = np.array([0, 1, 1])
    assert _nll(np.zeros((3, 2), np.float32), labels) == pytest.approx(np.log(2))
    confident = np.array([[4.0, -4.0], [-4.0, 4.0], [-4.0, 4.0]], dtype=np.float32)
    assert _nll(confident, labels) == pytest.approx(np.log1p(np.exp(-8.0)), rel=1e-4)


def test_patience_counts_only_after_warm_up(small, one_torch_thread):
    """A model that cannot improve (learning rate 0) stops after `patience` epochs counted
    from the end of warm-up (10% of 20 epochs = 2), not from epoch 1."""
    torch.manual_seed(0)
    model = create_model("resnet8", 2, (16, 16), width=0.5, quantized=False)
    hist = fit(model, small, TrainConfig(patience=1, augment=False), epochs=20, lr=0.0, seed=0, label="flat",
               freeze_bn_from=0)  # and frozen BatchNorm statistics: the model is constant
    assert len(hist["epochs"]) == 3  # epoch 1 best; epoch 2 inside warm-up; epoch 3 the one patience allows


def test_distillation_loss_is_zero_on_the_teacher_and_pulls_towards_it():
    from quant.losses import Distilled, distillation_loss

    teacher = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    assert float(distillation_loss(teacher.clone(), teacher, 2.0)) == pytest.approx(0.0, abs=1e-7)
    student = torch.zeros_like(teacher, requires_grad=True)
    distillation_loss(student, teacher, 2.0).backward()
    step = -student.grad  # gradient descent moves the student's logits towards the teacher's order
    assert (step.argmax(1) == teacher.argmax(1)).all()
    target = torch.tensor([0, 1])
    label = torch.nn.CrossEntropyLoss()
    assert float(Distilled(label, 0.0, 2.0)(teacher, target, -teacher)) == pytest.approx(float(label(teacher, target)))


def test_qat_distilling_from_the_float_model_moves_towards_it(small, one_torch_thread):
    """train.qat_distill = 1: QAT learns from the float model's outputs alone, so its logits end
    closer to the float model's than QAT on the labels alone (same seed, same steps)."""
    from quant.train import predict

    torch.manual_seed(0)
    float_model = create_model("resnet8", 2, (16, 16), width=0.5, quantized=False)
    fit(float_model, small, TrainConfig(patience=5), epochs=2, lr=1e-2, seed=0, label="float")
    ref = predict(float_model, small.val)
    gaps = {}
    for distill in (0.0, 1.0):
        qat = create_model("resnet8", 2, (16, 16), width=0.5)
        load_float_weights(qat, float_model)
        cfg = TrainConfig(patience=5, qat_distill=distill, qat_distill_temperature=1.0)
        fit(qat, small, cfg, epochs=2, lr=1e-3, seed=1, label="qat", teacher=float_model)
        p = torch.softmax(torch.as_tensor(predict(qat, small.val)), 1)
        gaps[distill] = float((p - torch.softmax(torch.as_tensor(ref), 1)).abs().mean())
    assert gaps[1.0] < gaps[0.0], gaps


def test_the_weight_average_is_the_ramped_ema_of_the_steps():
    from quant.weight_average import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    avg = WeightAverage(model, decay=0.9)
    expect = model[0].weight.detach().clone()
    for n in range(1, 6):
        with torch.no_grad():
            model[0].weight += 1.0
        model[1].num_batches_tracked += 1
        avg.update(model)
        d = min(0.9, (1 + n) / (10 + n))
        expect = d * expect + (1 - d) * model[0].weight.detach()
    averaged = avg.model(model)
    assert torch.allclose(averaged[0].weight, expect)
    assert int(averaged[1].num_batches_tracked) == 5  # integers follow the model
    assert averaged is not model and not torch.equal(averaged[0].weight, model[0].weight)


def test_qat_with_a_weight_average_keeps_the_average(small, one_torch_thread):
    """train.qat_ema: what is validated and kept is the averaged Brevitas model (its quantizer
    scales averaged too), and it still predicts like a trained model."""
    from quant.train import predict

    torch.manual_seed(0)
    float_model = create_model("resnet8", 2, (16, 16), width=0.5, quantized=False)
    fit(float_model, small, TrainConfig(patience=5), epochs=2, lr=1e-2, seed=0, label="float", ema=0.9)
    qat = create_model("resnet8", 2, (16, 16), width=0.5)
    load_float_weights(qat, float_model)
    hist = fit(qat, small, TrainConfig(patience=5), epochs=2, lr=1e-3, seed=1, label="qat", ema=0.9)
    logits = predict(qat, small.val)
    assert np.isfinite(logits).all() and np.isfinite(hist["best_val_nll"])
    assert hist["best_val_nll"] == pytest.approx(_nll(logits, small.val.labels), rel=1e-5)
