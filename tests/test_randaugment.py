"""Batched RandAugment against straightforward references of torchvision's formulas, on uint8-valued images."""
import math

import pytest
import torch

from vcon.data.randaugment import OPS, SIGNED, RandAugment

DEGREES, ENHANCE, BITS, THRESHOLD = 9.0, 0.27, 7, 178.5  # torchvision's bins[9] of 31


def images(b=4, c=3, h=32, w=32, seed=0):
    """uint8-valued levels (as float64, 0..255) with varied ranges per image and channel, one channel constant."""
    g = torch.Generator().manual_seed(seed)
    lo = torch.randint(0, 128, (b, c, 1, 1), generator=g)
    span = torch.randint(1, 128, (b, c, 1, 1), generator=g)
    x = (lo + torch.rand(b, c, h, w, generator=g) * span).floor()
    x[0, 0] = 77
    return x.double()


def run(x255, op, sign=1.0, magnitude=9):
    """One layer of ``op`` with ``sign`` on every image, on the module's scale (floats in [0, 1])."""
    b = x255.shape[0]
    ops = torch.full((1, b), OPS.index(op))
    signs = torch.full((1, b), float(sign))
    return RandAugment(num_ops=1, magnitude=magnitude).augment((x255 / 255).float(), ops, signs).double() * 255


# --- geometric ops: an explicit nearest-neighbour inverse map, pixel centres at index + 0.5 -------------------------

def inverse_mapped(x, source):
    """out[i, j] = x[round(source(i, j))] (round half to even, as grid_sample), zero outside."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            si, sj = (round(v) for v in source(i, j))
            if 0 <= si < h and 0 <= sj < w:
                out[..., i, j] = x[..., si, sj]
    return out


def rotation_source(h, w, degrees):
    """torchvision's rotate: counter-clockwise on screen, about the image centre."""
    a = math.radians(degrees)

    def source(i, j):
        x, y = j + 0.5 - w / 2, i + 0.5 - h / 2  # centred, y down
        sx, sy = math.cos(a) * x - math.sin(a) * y, math.sin(a) * x + math.cos(a) * y
        return sy + h / 2 - 0.5, sx + w / 2 - 0.5
    return source


GEOMETRIC = {  # op -> source(i, j) for signed fraction m = ±magnitude / 30 of the top bin, image h x w
    "ShearX": lambda m, h, w: lambda i, j: (i, j + 0.3 * m * (i + 0.5)),  # about the top-left corner
    "ShearY": lambda m, h, w: lambda i, j: (i + 0.3 * m * (j + 0.5), j),
    "TranslateX": lambda m, h, w: lambda i, j: (i, j - int(150 / 331 * w * m)),  # int() truncates towards 0
    "TranslateY": lambda m, h, w: lambda i, j: (i - int(150 / 331 * h * m), j),
    "Rotate": lambda m, h, w: rotation_source(h, w, 30 * m),
}


@pytest.mark.parametrize("c, size, magnitude", [(3, 32, 9), (1, 28, 9), (3, 32, 30)])
@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("op", list(GEOMETRIC))
def test_geometric_ops_are_torchvisions_inverse_maps(op, sign, c, size, magnitude):
    x = images(2, c, size, size)
    expected = inverse_mapped(x, GEOMETRIC[op](sign * magnitude / 30, size, size))
    assert torch.equal(run(x, op, sign, magnitude).round(), expected)


def test_translate_moves_content_by_whole_pixels_and_shear_pins_the_top_left_corner():
    x = images(1, 3, 32, 32)
    k = int(150 / 331 * 32 * 0.3)  # 4: int() truncates 4.35
    assert k == 4
    right, down = run(x, "TranslateX", 1.0).round(), run(x, "TranslateY", -1.0).round()
    assert torch.equal(right[..., k:], x[..., :-k]) and (right[..., :k] == 0).all()
    assert torch.equal(down[..., :-k, :], x[..., k:, :]) and (down[..., -k:, :] == 0).all()  # negative: up
    sheared_x, sheared_y = run(x, "ShearX", 1.0).round(), run(x, "ShearY", 1.0).round()
    assert torch.equal(sheared_x[..., 0, :], x[..., 0, :]) and not torch.equal(sheared_x[..., -1, :], x[..., -1, :])
    assert torch.equal(sheared_y[..., :, 0], x[..., :, 0]) and not torch.equal(sheared_y[..., :, -1], x[..., :, -1])
    dot = torch.zeros(1, 1, 31, 31)
    dot[..., 15, 29] = 1  # right of the centre: counter-clockwise moves it up
    rows = run(dot, "Rotate", 1.0)[0, 0].nonzero()[:, 0]
    assert rows.tolist() == [15 - round(14 * math.sin(math.radians(DEGREES)))]


# --- colour ops: torchvision's formulas, on float tensors (exact) and on uint8 (truncating) -------------------------

def gray(x, uint8):
    g = x if x.shape[1] == 1 else 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return g.floor() if uint8 else g


def blend(x, degenerate, f, uint8):
    out = (f * x + (1 - f) * degenerate).clamp(0, 255)
    return out.floor() if uint8 else out


def sharpness_degenerate(x, uint8):
    kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype) / 13
    out = x.clone()
    for i in range(1, x.shape[-2] - 1):
        for j in range(1, x.shape[-1] - 1):
            out[..., i, j] = (x[..., i - 1:i + 2, j - 1:j + 2] * kernel).sum((-2, -1))
    out[..., 1:-1, 1:-1] = out[..., 1:-1, 1:-1].round() if uint8 else out[..., 1:-1, 1:-1]
    return out


def autocontrast(x, uint8):
    lo, hi = x.amin((-2, -1), keepdim=True), x.amax((-2, -1), keepdim=True)
    scale = 255 / (hi - lo)
    lo, scale = torch.where(scale.isinf(), 0, lo), torch.where(scale.isinf(), 1, scale)
    out = ((x - lo) * scale).clamp(0, 255)
    return out.floor() if uint8 else out


def equalize(x, uint8):  # torchvision's _scale_channel, one channel at a time
    out = x.clone()
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            chan = x[b, c].long()
            hist = torch.bincount(chan.flatten(), minlength=256)
            step = torch.div(hist[hist != 0][:-1].sum(), 255, rounding_mode="floor")
            if step == 0:
                continue
            lut = torch.div(torch.cumsum(hist, 0) + torch.div(step, 2, rounding_mode="floor"), step,
                            rounding_mode="floor")
            lut = torch.nn.functional.pad(lut, [1, 0])[:-1].clamp(0, 255)
            out[b, c] = lut[chan].double()
    return out


COLOUR = {  # op -> reference(x, f, uint8) on 0..255 levels, f = 1 + sign * 0.27
    "Identity": lambda x, f, u: x,
    "Brightness": lambda x, f, u: blend(x, torch.zeros_like(x), f, u),
    "Color": lambda x, f, u: x if x.shape[1] == 1 else blend(x, gray(x, u), f, u),
    "Contrast": lambda x, f, u: blend(x, gray(x, u).mean((1, 2, 3), keepdim=True), f, u),
    "Sharpness": lambda x, f, u: blend(x, sharpness_degenerate(x, u), f, u),
    "Posterize": lambda x, f, u: (x.long() & (256 - 2 ** (8 - BITS))).double(),
    "Solarize": lambda x, f, u: torch.where(x >= THRESHOLD, 255 - x, x),
    "AutoContrast": lambda x, f, u: autocontrast(x, u),
    "Equalize": lambda x, f, u: equalize(x, u),
}


@pytest.mark.parametrize("c", [3, 1])
@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("op", list(COLOUR))
def test_colour_ops_follow_torchvisions_formulas(op, sign, c):
    x = images(4, c, 12, 10)  # non-square, with a constant channel
    ours = run(x, op, sign)
    f = 1 + sign * ENHANCE
    assert (ours - COLOUR[op](x, f, False)).abs().max() < 1e-3  # torchvision's formula on floats
    # torchvision on uint8 truncates blends, and the grayscale / blur inside them (by up to (f - 1) of a level)
    tolerance = 1.3 if op in ("Color", "Contrast", "Sharpness") else 1.001
    assert (ours - COLOUR[op](x, f, True)).abs().max() < tolerance


def test_ops_that_torchvision_defines_on_uint8_are_exact_and_change_the_image():
    x = images(4, 3, 16, 16)
    for op in ("Posterize", "Solarize", "Equalize"):
        ours = run(x, op)
        assert torch.equal(ours.round(), COLOUR[op](x, 1.0, True)) and not torch.equal(ours.round(), x), op


# --- random draws ----------------------------------------------------------------------------------------------------

def test_every_image_draws_its_own_ops_uniformly():
    n = 512
    augment = RandAugment()
    x = torch.randint(0, 256, (1, 3, 32, 32), generator=torch.Generator().manual_seed(0)).expand(n, -1, -1, -1) / 255
    ops, signs = augment.draw(n, generator=torch.Generator().manual_seed(0))
    assert ops.shape == signs.shape == (2, n) and set(signs.unique().tolist()) == {-1.0, 1.0}
    counts = torch.bincount(ops.flatten(), minlength=len(OPS))
    expected = ops.numel() / len(OPS)  # 73; binomial sd 8.3
    assert (counts - expected).abs().max() < 4 * math.sqrt(expected), counts.tolist()
    assert abs((signs == 1).double().mean() - 0.5) < 0.05

    out = augment(x, generator=torch.Generator().manual_seed(0))
    assert len(out.flatten(1).unique(dim=0)) > 200  # 14 * 14 ops, most signed: images differ
    one = RandAugment(num_ops=1)
    ops, signs = one.draw(n, generator=torch.Generator().manual_seed(1))
    out = one.augment(x, ops, signs)
    unchanged = (out == x).flatten(1).all(1)
    assert unchanged[ops[0] == OPS.index("Identity")].all()
    for op in ("TranslateX", "Rotate", "Brightness", "Solarize", "Equalize"):
        assert not unchanged[ops[0] == OPS.index(op)].any(), op
    assert set(SIGNED) < set(OPS)


def test_same_seed_same_output_different_seed_different_output():
    x = (images(16) / 255).float()
    augment = RandAugment()
    a, b, c = (augment(x, generator=torch.Generator().manual_seed(s)) for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("c, size", [(1, 28), (3, 32)])
def test_shape_dtype_and_range_are_kept(c, size):
    x = (images(64, c, size, size) / 255).float()
    out = RandAugment()(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert 0 <= out.min() and out.max() <= 1 and not torch.equal(out, x)


@pytest.mark.slow  # about 25 s of compiling on 2 CPU cores (a few with a warm inductor cache)
def test_compiled_equals_eager_for_the_same_generator_state():
    augment = RandAugment()
    compiled = torch.compile(augment)
    x = (images(32, 3, 32, 32) / 255).float()
    for seed in (0, 1):  # the second call reuses the compiled graph
        eager = augment(x, generator=torch.Generator().manual_seed(seed))
        # the same draws (dynamo runs the generator's draw eagerly); fused reductions (Contrast's mean) may differ
        # in the last bit
        torch.testing.assert_close(compiled(x, generator=torch.Generator().manual_seed(seed)), eager, atol=1e-5, rtol=0)
