"""mrcnn_jax/backbone.py and fpn.py: ResNet C2-C5 and FPN P2-P6 equal torchvision's with
the same weights (copied through mrcnn_jax/weights.py names and layouts)."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from mrcnn_jax.backbone import ResNet
from mrcnn_jax.config import BackboneConfig
from mrcnn_jax.fpn import FPN, upsample_nearest
from mrcnn_jax.layers import max_pool
from mrcnn_jax.weights import load_torchvision_state


def copy_torchvision_weights(model, prefix, state_dict, roi_size=7):
    """Load ``state_dict`` ({full torchvision name: tensor}) into ``model`` in place."""
    load_torchvision_state(model, state_dict, prefix, roi_size)


def prefixed(prefix, module):
    return {prefix + k: v for k, v in module.state_dict().items()}


def _nchw(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


def _nhwc(x):
    return np.asarray(x).transpose(0, 2, 3, 1)


def _randomise_bn(torch_model, seed):
    import torch

    gen = torch.Generator().manual_seed(seed)
    for module in torch_model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            with torch.no_grad():
                module.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(c, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=gen) + 0.5)


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_matches_torchvision(depth):
    torchvision = pytest.importorskip("torchvision")
    import torch

    torch.manual_seed(depth)
    torch_model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    _randomise_bn(torch_model, depth)
    torch_model.eval()
    cfg = BackboneConfig(depth=depth, norm="frozen_bn", trainable_layers=3)
    ours = nnx.eval_shape(lambda: ResNet(cfg, rngs=nnx.Rngs(0)))  # no init: all copied
    state = {k: v for k, v in prefixed("backbone.body.", torch_model).items()
             if not k.startswith("backbone.body.fc.")}  # the classifier is not part of the body
    copy_torchvision_weights(ours, ("body",), state)

    x = np.random.default_rng(depth).normal(size=(1, 64, 64, 3)).astype(np.float32)
    got = nnx.jit(lambda m, v: m(v))(ours, x)
    with torch.no_grad():
        t = torch.from_numpy(_nchw(x))
        t = torch_model.maxpool(torch_model.relu(torch_model.bn1(torch_model.conv1(t))))
        expected = []
        for layer in (torch_model.layer1, torch_model.layer2, torch_model.layer3,
                      torch_model.layer4):
            t = layer(t)
            expected.append(_nhwc(t.numpy()))
    assert [g.shape for g in got] == [e.shape for e in expected]
    assert [g.shape[1] for g in got] == [16, 8, 4, 2]
    for g, e in zip(got, expected, strict=True):
        scale = np.abs(e).max()
        np.testing.assert_allclose(np.asarray(g) / scale, e / scale, atol=1e-4)


def _abstract_resnet(**changes):
    cfg = BackboneConfig(depth=18, stem_width=8, widths=(8, 16, 16, 32), group_norm_groups=4,
                         trainable_layers=3)
    cfg = dataclasses.replace(cfg, **changes)
    return nnx.eval_shape(lambda: ResNet(cfg, rngs=nnx.Rngs(0)))


def _trainable_kinds(model):
    """``{(top-level attribute, variable name)}`` of the trainable variables."""
    return {(p[0], p[-1]) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_resnet_out_channels_and_frozen_convs():
    model = _abstract_resnet(norm="group_norm")
    assert model.out_channels == (8, 16, 16, 32)
    trainable = _trainable_kinds(model)
    assert ("conv1", "kernel") not in trainable and ("layer1", "kernel") not in trainable
    assert {("layer2", "kernel"), ("layer3", "kernel"), ("layer4", "kernel")} <= trainable
    assert _abstract_resnet(depth=50).out_channels == (32, 64, 64, 128)
    assert not any(n[0] in ("bn1", "layer1") for n in _trainable_kinds(_abstract_resnet()))


def test_frozen_layers_freeze_their_group_norm_too():
    # torchvision's trainable_layers freezes every parameter of conv1/bn1/layer1, norms included
    trainable = _trainable_kinds(_abstract_resnet(norm="group_norm"))
    assert not any(name in ("bn1", "layer1") for name, _ in trainable)


def _group_norm_resnet(**changes):
    cfg = BackboneConfig(depth=18, stem_width=16, widths=(16, 32, 64, 128), norm="group_norm",
                         group_norm_groups=4, trainable_layers=5, **changes)
    return ResNet(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("conv_init", ["kaiming_normal_fan_out", "kaiming_uniform_sqrt5"])
def test_conv_init_spread(conv_init):
    # layer3's 3x3 convs are 64 -> 64: fan_in = fan_out = 576, so the two inits' variances are
    # 2 / 576 (He, normal) and 1 / (3 * 576) (uniform, bound 1 / sqrt(576) = 1 / 24)
    kernel = np.asarray(_group_norm_resnet(conv_init=conv_init).layer3[1].conv1.kernel[...])
    expected_var = {"kaiming_normal_fan_out": 2 / 576, "kaiming_uniform_sqrt5": 1 / (3 * 576)}
    assert kernel.shape == (3, 3, 64, 64)
    np.testing.assert_allclose(kernel.var(), expected_var[conv_init], rtol=0.05)
    if conv_init == "kaiming_uniform_sqrt5":
        assert np.abs(kernel).max() <= 1 / 24 and np.abs(kernel).max() > 0.99 / 24


def test_zero_init_residual_switch():
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    on, off = _group_norm_resnet(), _group_norm_resnet(zero_init_residual=False)
    for model, scale in [(on, 0.0), (off, 1.0)]:
        for layer in (model.layer1, model.layer4):
            for block in layer:
                np.testing.assert_array_equal(block.bn2.scale[...], scale)
                np.testing.assert_array_equal(block.bn1.scale[...], 1.0)
    # with zero-init, layer1's blocks (no downsample) are identities on relu(stem output)
    stem = jax.nn.relu(on.bn1(on.conv1(x)))
    pooled = max_pool(stem, 3, 2, 1)
    np.testing.assert_allclose(on.layer1[1](on.layer1[0](pooled)), pooled, atol=1e-6)
    assert np.abs(np.asarray(off.layer1[0](pooled)) - np.asarray(pooled)).max() > 0.1


def test_unknown_conv_init_is_an_error():
    with pytest.raises(ValueError, match="conv_init must be one of .*got 'he'"):
        _group_norm_resnet(conv_init="he")


@pytest.mark.parametrize("size", [64, 80])  # 80: P5 2.5 -> odd sizes, P6 ceil
def test_fpn_matches_torchvision(size):
    pytest.importorskip("torchvision")
    import torch
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

    in_channels, f = [8, 16, 24, 32], 12
    torch.manual_seed(0)
    torch_fpn = FeaturePyramidNetwork(in_channels, f, extra_blocks=LastLevelMaxPool()).eval()
    with torch.no_grad():  # nonzero biases (torchvision inits them to 0), so a dropped one shows
        for block in list(torch_fpn.inner_blocks) + list(torch_fpn.layer_blocks):
            block[0].bias.normal_()
    ours = FPN(in_channels, f, rngs=nnx.Rngs(0))
    copy_torchvision_weights(ours, ("fpn",), prefixed("backbone.fpn.", torch_fpn))
    rng = np.random.default_rng(size)

    sides = [-(-size // s) for s in (4, 8, 16, 32)]  # (64: 16, 8, 4, 2; 80: 20, 10, 5, 3)
    feats = [rng.normal(size=(2, s, s, c)).astype(np.float32)
             for s, c in zip(sides, in_channels, strict=True)]
    got = nnx.jit(lambda m, v: m(v))(ours, feats)
    with torch.no_grad():
        expected = torch_fpn({str(i): torch.from_numpy(_nchw(x)) for i, x in enumerate(feats)})
    expected = [_nhwc(v.numpy()) for v in expected.values()]
    assert len(got) == len(expected) == 5
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "in_size, out_size", [((2, 3), (4, 6)), ((3, 5), (5, 7)), ((5, 3), (8, 10)), ((4, 4), (3, 7))]
)
def test_upsample_nearest_matches_torch(in_size, out_size):
    pytest.importorskip("torchvision")
    import torch
    import torch.nn.functional as F

    x = np.random.default_rng(0).normal(size=(1, *in_size, 2)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(_nchw(x)), size=out_size, mode="nearest").numpy()
    np.testing.assert_array_equal(upsample_nearest(x, out_size), _nhwc(expected))


def test_upsample_nearest_hand_case():
    x = np.float32([[1, 2], [3, 4]]).reshape(1, 2, 2, 1)
    got = upsample_nearest(x, (3, 5))[0, :, :, 0]
    # rows floor(i * 2 / 3) = 0, 0, 1; cols floor(j * 2 / 5) = 0, 0, 0, 1, 1
    np.testing.assert_array_equal(got, [[1, 1, 1, 2, 2], [1, 1, 1, 2, 2], [3, 3, 3, 4, 4]])
