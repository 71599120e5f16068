"""Messages of the shared argument checks: name, expected, got."""
import numpy as np
import pytest

from mrcnn_np._checks import (check_array, check_float, check_pair, check_positive_int,
                              check_same_dtype, describe_shape)


def test_check_array_messages():
    x = np.zeros((12, 4))
    assert check_array("rois", x, shape=("R", 4)) is x
    with pytest.raises(ValueError, match=r"^rois must have shape \(R, 5\), got \(12, 4\)$"):
        check_array("rois", x, shape=("R", 5))
    with pytest.raises(ValueError, match=r"^x must have shape 3 dimensions, got \(12, 4\)$"):
        check_array("x", x, ndim=3)
    with pytest.raises(TypeError, match=r"^x must be a numpy.ndarray, got list$"):
        check_array("x", [1, 2])
    with pytest.raises(TypeError, match=r"^labels must have a signed integer or unsigned integer dtype, got float64$"):
        check_array("labels", x, dtype_kind="iu")


def test_describe_shape():
    assert describe_shape(("N", "C", None, 4)) == "(N, C, *, 4)"
    assert describe_shape((5,)) == "(5,)"


def test_scalar_checks():
    assert check_positive_int("stride", np.int64(2)) == 2
    with pytest.raises(TypeError, match="^stride must be an int, got bool$"):
        check_positive_int("stride", True)
    with pytest.raises(ValueError, match="^stride must be >= 1, got 0$"):
        check_positive_int("stride", 0)
    assert check_pair("size", 3) == (3, 3)
    assert check_pair("size", [2, 5]) == (2, 5)
    with pytest.raises(ValueError, match="size must be an int or a pair of ints"):
        check_pair("size", (1, 2, 3))
    assert check_float("beta", 1) == 1.0
    with pytest.raises(ValueError, match="^beta must be finite, got nan$"):
        check_float("beta", float("nan"))
    with pytest.raises(ValueError, match=r"^beta must be >= 0.0, got -1.0$"):
        check_float("beta", -1, minimum=0.0)
    with pytest.raises(ValueError, match=r"^p must be <= 1.0, got 2.0$"):
        check_float("p", 2, maximum=1.0)
    with pytest.raises(TypeError, match="^beta must be a real number, got str$"):
        check_float("beta", "1")


def test_check_same_dtype():
    check_same_dtype(x=np.zeros(1), b=None, w=np.zeros(2))
    with pytest.raises(TypeError, match=r"^w must have the dtype of x \(float64\), got float32$"):
        check_same_dtype(x=np.zeros(1), w=np.zeros(1, np.float32))


def test_check_rng_accepts_generator_refuses_seed_and_randomstate():
    from mrcnn_np._checks import check_rng

    g = np.random.default_rng(0)
    assert check_rng(g) is g
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator, got int"):
        check_rng(0)
    with pytest.raises(TypeError, match="generator must be a numpy.random.Generator, got RandomState"):
        check_rng(np.random.RandomState(0), "generator")


def test_check_finite_names_the_argument():
    from mrcnn_np._checks import check_finite

    ok = np.array([1.0, -2.0])
    assert check_finite("x", ok) is ok
    assert check_finite("x", np.zeros(0)).size == 0
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="boxes must be finite"):
            check_finite("boxes", np.array([0.0, bad]))


def test_check_params_names_the_key_for_each_failure():
    from mrcnn_np._checks import check_params

    good = {"a.w": np.zeros((2, 3)), "a.b": np.zeros(2), "other.x": np.zeros(1)}
    expected = {"a.w": (2, 3), "a.b": None}
    check_params(good, expected, dtype=np.float64, prefix="a.")  # passes; other.x ignored
    with pytest.raises(TypeError, match="params must be a dict"):
        check_params([1], expected)
    with pytest.raises(ValueError, match=r"params is missing 'a.b'"):
        check_params({"a.w": good["a.w"]}, expected)
    with pytest.raises(ValueError, match=r"params\['a.w'\] must have shape \(2, 3\), got \(3, 2\)"):
        check_params({**good, "a.w": np.zeros((3, 2))}, expected)
    with pytest.raises(TypeError, match=r"params\['a.b'\] must be a numpy.ndarray, got list"):
        check_params({**good, "a.b": [0.0, 0.0]}, expected)
    with pytest.raises(TypeError, match=r"params\['a.w'\] must have dtype float32 \(the input's\)"):
        check_params(good, expected, dtype=np.float32)
    with pytest.raises(ValueError, match=r"unexpected key 'a.extra' in block A"):
        check_params({**good, "a.extra": np.zeros(1)}, expected, prefix="a.", context=" in block A")


def test_check_float_dtype_and_grad_dict():
    from mrcnn_np._checks import check_float_dtype, check_grad_dict

    assert check_float_dtype("float32") == np.float32
    with pytest.raises(TypeError, match="dtype must be a floating dtype, got int64"):
        check_float_dtype(np.int64)
    shapes = {"C2": (1, 2, 4, 4), "C3": (1, 2, 2, 2)}
    check_grad_dict("dfeatures", {"C3": np.zeros((1, 2, 2, 2))}, shapes, np.float64)  # subset is fine
    with pytest.raises(ValueError, match="dfeatures has unexpected key 'C9'"):
        check_grad_dict("dfeatures", {"C9": np.zeros(1)}, shapes, np.float64)
    with pytest.raises(ValueError, match=r"dfeatures\['C2'\] must have shape \(1, 2, 4, 4\)"):
        check_grad_dict("dfeatures", {"C2": np.zeros((1, 2, 2, 2))}, shapes, np.float64)
    with pytest.raises(TypeError, match=r"dfeatures\['C3'\] must have dtype float64, got float32"):
        check_grad_dict("dfeatures", {"C3": np.zeros((1, 2, 2, 2), np.float32)}, shapes, np.float64)


def test_check_grad_list():
    from mrcnn_np._checks import check_grad_list

    shapes = ((1, 2, 4, 4), (1, 2, 2, 2))
    check_grad_list("dpyramid", [None, np.zeros((1, 2, 2, 2))], shapes, np.float64)  # None: zero
    with pytest.raises(TypeError, match="dpyramid must be a list of 2 per-level arrays"):
        check_grad_list("dpyramid", {"P3": np.zeros((1, 2, 2, 2))}, shapes, np.float64)
    with pytest.raises(ValueError, match=r"dpyramid must have one entry per level \(2\), got 1"):
        check_grad_list("dpyramid", [np.zeros((1, 2, 4, 4))], shapes, np.float64)
    with pytest.raises(ValueError, match=r"dpyramid\[0\] must have shape \(1, 2, 4, 4\)"):
        check_grad_list("dpyramid", [np.zeros((1, 2, 2, 2)), None], shapes, np.float64)
    with pytest.raises(TypeError, match=r"dpyramid\[1\] must have dtype float64, got float32"):
        check_grad_list("dpyramid", [None, np.zeros((1, 2, 2, 2), np.float32)], shapes, np.float64)


def test_check_hw_pair_refuses_a_bare_int_and_bools():
    from mrcnn_np._checks import check_hw_pair

    assert check_hw_pair("image_size", (800, np.int64(1333))) == (800, 1333)
    assert check_hw_pair("image_size", np.array([3, 4])) == (3, 4)
    assert check_hw_pair("grid", (0, 5), minimum=0) == (0, 5)
    for bad in (800, (800,), (800, 1.5), (True, 3), "ab"):
        with pytest.raises(ValueError, match=r"image_size must be a pair of ints \(h, w\)"):
            check_hw_pair("image_size", bad)
    with pytest.raises(ValueError, match=r"image_shapes\[1\] entries must be >= 1, got \(0, 4\)"):
        check_hw_pair("image_shapes[1]", (0, 4))
