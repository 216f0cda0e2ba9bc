import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from quant import metrics


def _logits_from_scores(scores):
    # two-class logits whose softmax P(class 1) equals `scores`
    s = np.clip(np.asarray(scores, dtype=np.float64), 1e-9, 1 - 1e-9)
    return np.stack([np.zeros_like(s), np.log(s / (1 - s))], axis=1)


def test_threshold_for_recall_hand_example():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.1])
    positive = np.array([1, 0, 1, 1, 0, 1, 0], bool)
    # positives sorted: 0.9, 0.7, 0.6, 0.2 -> 75% recall needs the 3rd: 0.6
    assert metrics.threshold_for_recall(scores, positive, 0.75) == 0.6
    assert metrics.threshold_for_recall(scores, positive, 1.0) == 0.2


def test_threshold_for_fpr_hand_example():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.1])
    positive = np.array([1, 0, 1, 1, 0, 1, 0], bool)
    t = metrics.threshold_for_fpr(scores, positive, 0.34)  # 3 negatives: one may pass
    flagged = scores >= t
    assert (flagged & ~positive).sum() == 1 and t > 0.3


def test_evaluate_binary_matches_sklearn_and_operating_point():
    rng = np.random.default_rng(0)
    labels = (rng.random(400) < 0.3).astype(int)
    scores = np.clip(labels * 0.35 + rng.random(400) * 0.65, 0, 1)
    logits = _logits_from_scores(scores)
    thr = metrics.choose_threshold(logits, labels, ok_index=0, target_recall=0.9)
    m = metrics.evaluate(logits, labels, ok_index=0, threshold=thr)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert m["op_recall"] >= 0.9
    assert sum(map(sum, m["confusion_matrix"])) == 400


def test_multiclass_without_ok_class_has_no_defect_score():
    logits = np.eye(3)[[0, 1, 2, 1]] * 5
    m = metrics.evaluate(logits, np.array([0, 1, 2, 2]), ok_index=None)
    assert m["accuracy"] == 0.75 and "auroc" not in m


def test_agreement_counts_flips():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    b = a.copy()
    b[1] = [1.0, 0.5]
    ag = metrics.agreement(a, b)
    assert ag["argmax_agreement"] == pytest.approx(2 / 3) and ag["flipped_indices"] == [1]
    assert ag["max_abs_diff"] == 1.0 and ag["flipped_margins"] == [1.0]  # a[1]: 1.0 - 0.0
