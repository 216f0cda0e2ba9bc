"""Classification metrics for inspection: accuracy, P/R/F1, AP, AUROC, confusion matrix,
recall at a fixed false-positive rate, and the operating threshold.

Scores: the "defect score" of an image is P(defect) = 1 - P(ok class). Datasets without
an ok class (e.g. NEU: every image is a defect type) have no defect score; their
metrics are the multi-class ones only.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from core.compare import compare


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def defect_scores(logits: np.ndarray, ok_index: int | None) -> np.ndarray | None:
    """P(defect) per image, or None when the dataset has no ok class."""
    if ok_index is None:
        return None
    return 1.0 - softmax(np.asarray(logits, dtype=np.float64))[:, ok_index]


def is_defect(labels: np.ndarray, ok_index: int | None) -> np.ndarray | None:
    return None if ok_index is None else (np.asarray(labels) != ok_index)


def threshold_for_recall(scores: np.ndarray, positive: np.ndarray, target_recall: float) -> float:
    """Highest threshold t with recall(scores >= t) >= target_recall."""
    pos = np.sort(scores[positive])[::-1]
    if len(pos) == 0:
        return 0.5
    k = int(np.ceil(target_recall * len(pos))) - 1
    return float(pos[min(max(k, 0), len(pos) - 1)])


def threshold_for_fpr(scores: np.ndarray, positive: np.ndarray, target_fpr: float) -> float:
    """Lowest threshold t with FPR(scores >= t) <= target_fpr."""
    neg = np.sort(scores[~positive])[::-1]
    if len(neg) == 0:
        return 0.5
    allowed = int(np.floor(target_fpr * len(neg)))  # negatives that may score >= t
    if allowed >= len(neg):
        return float(neg[-1])
    return float(np.nextafter(neg[allowed], np.inf))


def choose_threshold(logits, labels, ok_index, target_recall=None, target_fpr=None) -> float | None:
    scores = defect_scores(logits, ok_index)
    if scores is None:
        return None
    positive = is_defect(labels, ok_index)
    if target_fpr is not None:
        return threshold_for_fpr(scores, positive, target_fpr)
    return threshold_for_recall(scores, positive, target_recall if target_recall is not None else 0.95)


def recall_at_fpr(scores: np.ndarray, positive: np.ndarray, fpr: float) -> float:
    if positive.all() or (~positive).all():
        return float("nan")
    f, t, _ = roc_curve(positive, scores)
    return float(t[f <= fpr].max()) if (f <= fpr).any() else 0.0


def wilson_lower(successes: int, n: int, z: float = 1.96) -> float:
    """Lower end of the Wilson score interval of a proportion (0 for n = 0)."""
    if n == 0:
        return 0.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float((centre - spread) / (1 + z * z / n))


def hanley_mcneil_lower(auroc: float, n_pos: int, n_neg: int, z: float = 1.96) -> float:
    """Lower end of the AUROC's normal interval with Hanley & McNeil's (1982) standard error."""
    if not (n_pos and n_neg) or not np.isfinite(auroc):
        return float("nan")
    q1, q2 = auroc / (2 - auroc), 2 * auroc * auroc / (1 + auroc)
    var = (auroc * (1 - auroc) + (n_pos - 1) * (q1 - auroc ** 2) + (n_neg - 1) * (q2 - auroc ** 2)) / (n_pos * n_neg)
    return float(auroc - z * np.sqrt(max(var, 0.0)))


def evaluate(logits, labels, ok_index: int | None, threshold: float | None = None, report_fpr: float = 0.01) -> dict:
    """All metrics for one set of logits. Keys are stable: reports rely on them."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    n_classes = logits.shape[1]
    pred = logits.argmax(axis=1)
    p, r, f1, _ = precision_recall_fscore_support(labels, pred, average="macro", labels=range(n_classes), zero_division=0)
    out = {
        "n": int(len(labels)),
        "accuracy": float((pred == labels).mean()),
        "precision": float(p),
        "recall": float(r),
        "f1": float(f1),
        "confusion_matrix": confusion_matrix(labels, pred, labels=range(n_classes)).tolist(),
        # chance: always answering the most frequent class; the accuracy's 95% lower bound (Wilson)
        "accuracy_chance": float(np.bincount(labels, minlength=n_classes).max() / max(len(labels), 1)),
        "accuracy_lower95": wilson_lower((pred == labels).sum(), len(labels)),
    }
    scores = defect_scores(logits, ok_index)
    if scores is None:
        return out
    positive = is_defect(labels, ok_index)
    both = positive.any() and (~positive).any()
    out["ap"] = float(average_precision_score(positive, scores)) if both else float("nan")
    out["auroc"] = float(roc_auc_score(positive, scores)) if both else float("nan")
    # chance: AUROC 0.5 and AP = the share of defects; the AUROC's 95% lower bound (Hanley-McNeil)
    out["ap_chance"] = float(positive.mean()) if len(positive) else float("nan")
    out["auroc_lower95"] = hanley_mcneil_lower(out["auroc"], int(positive.sum()), int((~positive).sum()))
    out[f"recall_at_fpr"] = recall_at_fpr(scores, positive, report_fpr)
    out["report_fpr"] = report_fpr
    if threshold is not None:
        flagged = scores >= threshold
        tp = int((flagged & positive).sum())
        fp = int((flagged & ~positive).sum())
        fn = int((~flagged & positive).sum())
        out["threshold"] = float(threshold)
        out["op_recall"] = tp / max(tp + fn, 1)
        out["op_precision"] = tp / max(tp + fp, 1)
        out["op_fpr"] = fp / max(int((~positive).sum()), 1)
        out["op_f1"] = 2 * tp / max(2 * tp + fp + fn, 1)
    # binary-view F1/precision/recall of the argmax decision (defect vs ok)
    pred_def = pred != ok_index
    bp, br, bf, _ = precision_recall_fscore_support(positive, pred_def, average="binary", zero_division=0)
    out.update(defect_precision=float(bp), defect_recall=float(br), defect_f1=float(bf))
    return out


def agreement(a_logits: np.ndarray, b_logits: np.ndarray) -> dict:
    """How closely model b's outputs follow reference a's on the same inputs (core.compare)."""
    return compare(b_logits, a_logits)


def op_predictions(logits, ok_index: int | None, threshold: float | None):
    """The decision at the operating point, per image: (defect score or None, flagged, class).

    flagged: defect score >= threshold (argmax != ok without a threshold; always True
    without an ok class). class: the ok class when not flagged, else the most likely defect
    class. The parity report and `qdeploy predict` both decide with this."""
    logits = np.asarray(logits, dtype=np.float64)
    scores = defect_scores(logits, ok_index)
    if scores is None:
        return None, np.ones(len(logits), dtype=bool), logits.argmax(1)
    flagged = scores >= threshold if threshold is not None else logits.argmax(1) != ok_index
    defect_only = logits.copy()
    defect_only[:, ok_index] = -np.inf
    return scores, flagged, np.where(flagged, defect_only.argmax(1), ok_index)


def at_operating_point(logits, labels, ok_index: int | None, threshold: float | None) -> dict | None:
    """The headline metrics of the line: the classes decided at the stored threshold
    (op_predictions), beside which `evaluate` gives the argmax ones. None without an ok class."""
    if ok_index is None:
        return None
    labels = np.asarray(labels)
    n_classes = np.asarray(logits).shape[1]
    _, flagged, pred = op_predictions(logits, ok_index, threshold)
    positive = labels != ok_index
    p, r, f1, _ = precision_recall_fscore_support(labels, pred, average="macro", labels=range(n_classes), zero_division=0)
    tp, fp = int((flagged & positive).sum()), int((flagged & ~positive).sum())
    fn, tn = int((~flagged & positive).sum()), int((~flagged & ~positive).sum())
    return {"threshold": None if threshold is None else float(threshold), "n": int(len(labels)),
            "accuracy": float((pred == labels).mean()), "precision": float(p), "recall": float(r), "f1": float(f1),
            "confusion_matrix": confusion_matrix(labels, pred, labels=range(n_classes)).tolist(),
            "defect": {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "recall": tp / max(tp + fn, 1),
                       "precision": tp / max(tp + fp, 1), "fpr": fp / max(fp + tn, 1)},
            "decisions": [int(x) for x in flagged], "predicted": [int(x) for x in pred]}
