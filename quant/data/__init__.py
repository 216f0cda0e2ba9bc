"""Datasets: the embedded synthetic surfaces and loaders for real inspection layouts.

Contract used by the rest of qdeploy (see quant/data/splits.py):
    load_splits(cfg: DatasetConfig, seed: int, cache_dir: Path) -> Splits
    Splits.train / .val / .test are ImageSet (torch Dataset): item -> (uint8 [1,H,W], int label)
"""
from quant.data.imageset import ImageSet
from quant.data.splits import Splits, load_splits

__all__ = ["ImageSet", "Splits", "load_splits"]
