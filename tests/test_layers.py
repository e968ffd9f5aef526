"""mrcnn_jax/layers.py: convolutions, frozen BatchNorm and max-pool equal torch's, NHWC."""

import jax
import numpy as np
import pytest
from flax import nnx

from mrcnn_jax.layers import Conv2d, ConvTranspose2x2, FrozenBatchNorm, make_norm, max_pool


def _nchw(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


def _nhwc(x):
    return np.asarray(x).transpose(0, 2, 3, 1)


def test_1x1_conv_hand_case():
    conv = Conv2d(2, 1, 1, rngs=nnx.Rngs(0))
    conv.kernel[...] = np.float32([2.0, -1.0]).reshape(1, 1, 2, 1)
    conv.bias[...] = np.float32([0.5])
    x = np.float32([[1, 2], [3, 4]])[None, :, :, None] * np.float32([1.0, 10.0])  # (1, 2, 2, 2)
    # each pixel v with channels (v, 10 v): 2 v - 10 v + 0.5 = -8 v + 0.5
    np.testing.assert_allclose(conv(x)[0, :, :, 0], [[-7.5, -15.5], [-23.5, -31.5]])


def test_conv_without_bias_and_frozen_kernel():
    conv = Conv2d(3, 4, 3, padding=1, use_bias=False, trainable=False, rngs=nnx.Rngs(0))
    assert conv.bias is None
    assert len(nnx.state(conv, nnx.Param)) == 0  # nothing for the optimizer
    assert conv(np.zeros((1, 5, 5, 3), np.float32)).shape == (1, 5, 5, 4)


@pytest.mark.parametrize(
    "kernel, stride, padding, size",
    [(3, 1, 1, 9), (3, 2, 1, 9), (3, 2, 1, 8), (1, 2, 0, 9), (7, 2, 3, 16), (7, 2, 3, 15),
     (7, 1, 3, 10)],
)
def test_conv2d_matches_torch(kernel, stride, padding, size):
    pytest.importorskip("torchvision")
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(kernel * 10 + stride + size)
    x = rng.normal(size=(2, size, size + 1, 3)).astype(np.float32)
    weight = rng.normal(size=(5, 3, kernel, kernel)).astype(np.float32)  # OIHW
    bias = rng.normal(size=(5,)).astype(np.float32)
    conv = Conv2d(3, 5, kernel, stride, padding, rngs=nnx.Rngs(0))
    conv.kernel[...] = weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    conv.bias[...] = bias
    expected = F.conv2d(torch.from_numpy(_nchw(x)), torch.from_numpy(weight),
                        torch.from_numpy(bias), stride=stride, padding=padding).numpy()
    got = conv(x)
    assert got.shape == _nhwc(expected).shape
    np.testing.assert_allclose(got, _nhwc(expected), rtol=1e-4, atol=1e-4)


def test_conv_transpose_2x2_matches_torch():
    pytest.importorskip("torchvision")
    import torch

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
    torch_layer = torch.nn.ConvTranspose2d(6, 5, kernel_size=2, stride=2)
    ours = ConvTranspose2x2(6, 5, rngs=nnx.Rngs(0))
    weight = torch_layer.weight.detach().numpy()  # (in, out, a, b)
    ours.kernel[...] = weight.transpose(2, 3, 0, 1)  # -> (a, b, in, out)
    ours.bias[...] = torch_layer.bias.detach().numpy()
    with torch.no_grad():
        expected = torch_layer(torch.from_numpy(_nchw(x))).numpy()
    got = ours(x)
    assert got.shape == (2, 6, 8, 5)
    np.testing.assert_allclose(got, _nhwc(expected), rtol=1e-5, atol=1e-5)


def test_conv_transpose_2x2_hand_case():
    layer = ConvTranspose2x2(1, 1, rngs=nnx.Rngs(0))
    layer.kernel[...] = np.float32([[1, 2], [3, 4]]).reshape(2, 2, 1, 1)
    layer.bias[...] = np.float32([0.0])
    x = np.float32([[1, 10]]).reshape(1, 1, 2, 1)
    np.testing.assert_allclose(layer(x)[0, :, :, 0], [[1, 2, 10, 20], [3, 4, 30, 40]])


@pytest.mark.parametrize("eps", [1e-5, 0.0])
def test_frozen_batch_norm_matches_torchvision(eps):
    torchvision = pytest.importorskip("torchvision")
    import torch

    rng = np.random.default_rng(1)
    c = 6
    stats = {
        "weight": rng.normal(size=c), "bias": rng.normal(size=c),
        "running_mean": rng.normal(size=c), "running_var": rng.uniform(0.1, 2.0, size=c),
    }
    stats = {k: v.astype(np.float32) for k, v in stats.items()}
    torch_bn = torchvision.ops.FrozenBatchNorm2d(c, eps=eps)
    torch_bn.load_state_dict({k: torch.from_numpy(v) for k, v in stats.items()})
    ours = FrozenBatchNorm(c, eps)
    for name, value in stats.items():
        getattr(ours, name)[...] = value
    x = rng.normal(size=(2, 5, 4, c)).astype(np.float32)
    expected = torch_bn(torch.from_numpy(_nchw(x))).numpy()
    np.testing.assert_allclose(ours(x), _nhwc(expected), rtol=1e-5, atol=1e-5)


def test_frozen_batch_norm_is_not_trainable():
    bn = make_norm("frozen_bn", 4, rngs=nnx.Rngs(0))
    assert len(nnx.state(bn, nnx.Param)) == 0
    np.testing.assert_allclose(bn(np.full((1, 2, 2, 4), 3.0, np.float32)), 3.0 / np.sqrt(1 + 1e-5))


def test_make_norm_group_norm_zero_init_and_error():
    gn = make_norm("group_norm", 16, groups=4, zero_init=True, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(1, 3, 3, 16)).astype(np.float32)
    np.testing.assert_array_equal(gn(x), 0.0)  # zero scale, zero bias
    with pytest.raises(ValueError, match="frozen_bn"):
        make_norm("batch_norm", 4, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("size", [8, 9, 15])
def test_max_pool_matches_torch(size):
    pytest.importorskip("torchvision")
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(size).normal(size=(2, size, size + 2, 3)).astype(np.float32)
    x[0, 0, 0, 0] = -1e9  # a corner below anything in the padding's reach stays finite
    for window, stride, padding in [(3, 2, 1), (1, 2, 0)]:
        expected = F.max_pool2d(torch.from_numpy(_nchw(x)), window, stride, padding).numpy()
        got = jax.jit(max_pool, static_argnums=(1, 2, 3))(x, window, stride, padding)
        assert got.shape == _nhwc(expected).shape
        np.testing.assert_array_equal(got, _nhwc(expected))


def test_max_pool_hand_case():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1) - 100.0  # all negative
    # windows centred on (0, 0), (0, 2), (2, 0), (2, 2): padding is -inf, never picked
    np.testing.assert_array_equal(max_pool(x, 3, 2, 1)[0, :, :, 0], [[-95, -93], [-87, -85]])
