"""Kaggle/Severstal RLE: a hand-worked example, round trips, and malformed strings."""
import numpy as np
import pytest

from core.errors import UserError
from quant.data.rle import parse_rle, rle_area, rle_decode, rle_encode

# A 4-row x 3-column mask. Column-major, 1-indexed numbering: pixel (r, c) is 1 + r + 4c,
#
#        c0 c1 c2          numbers   c0 c1 c2
#   r0    0  1  0                     1  5  9
#   r1    0  1  0                     2  6 10
#   r2    1  0  0                     3  7 11
#   r3    1  0  1                     4  8 12
#
# Set pixels: 3, 4 (bottom of column 0), 5, 6 (top of column 1), 12. Pixels 3..6 are
# consecutive in column-major order, so they form ONE run across the column boundary:
# "3 4" (start 3, length 4), then "12 1".
HAND_MASK = np.array([[0, 1, 0], [0, 1, 0], [1, 0, 0], [1, 0, 1]], dtype=bool)
HAND_RLE = "3 4 12 1"


def test_hand_worked_example_encodes_and_decodes():
    assert rle_encode(HAND_MASK) == HAND_RLE
    np.testing.assert_array_equal(rle_decode(HAND_RLE, (4, 3)), HAND_MASK)
    assert rle_area(HAND_RLE, 12) == 5


def test_runs_in_any_order_decode_the_same():
    np.testing.assert_array_equal(rle_decode("12 1 3 4", (4, 3)), HAND_MASK)


def test_empty_and_full_masks():
    assert rle_encode(np.zeros((4, 3), bool)) == ""
    assert not rle_decode("", (4, 3)).any()
    assert rle_encode(np.ones((4, 3), bool)) == "1 12"
    assert rle_decode("1 12", (4, 3)).all()


@pytest.mark.parametrize("shape,density", [((256, 1600), 0.02), ((37, 53), 0.5), ((1, 9), 0.7), ((64, 1), 0.3)])
def test_round_trip_random_masks(shape, density):
    rng = np.random.default_rng(7)
    # blobs rather than salt-and-pepper: smear random seeds along both axes
    mask = rng.random(shape) < density
    mask |= np.roll(mask, 1, axis=0) & (rng.random(shape) < 0.8)
    rle = rle_encode(mask)
    np.testing.assert_array_equal(rle_decode(rle, shape), mask)
    assert rle_area(rle, mask.size) == mask.sum()
    starts, lengths = parse_rle(rle, mask.size)
    assert (np.diff(starts) > 0).all() and (starts[1:] > starts[:-1] + lengths[:-1]).all()  # maximal, disjoint runs


@pytest.mark.parametrize(
    "rle,why",
    [
        ("3 4 12", "odd number"),
        ("3 four", "not an integer"),
        ("3 4.5", "not an integer"),
        ("0 2", "1-indexed"),
        ("-1 2", "1-indexed"),
        ("3 0", "at least 1"),
        ("11 3", "beyond"),
        ("3 4 5 1", "overlap"),
        ("5 1 3 4", "overlap"),
    ],
)
def test_malformed_rle_is_a_user_error_naming_the_source(rle, why):
    with pytest.raises(UserError, match=why) as e:
        rle_decode(rle, (4, 3), where="train.csv line 7")
    assert "train.csv line 7" in str(e.value)
    assert "\n" not in str(e.value)
