"""LowPrecisionSGLD.step on the compiled CPU kernels == the reference path (path='reference'), word for word."""

import io

import numpy as np
import pytest
import torch

from emulator.optim.optimizer import LowPrecisionSGLD, word_dtype
from emulator.spec.bfp import BfpConfig
from emulator.spec.presets import preset


def _params(seed: int, shapes: list[tuple[int, ...]]) -> list[torch.nn.Parameter]:
    rng = np.random.default_rng(seed)
    return [torch.nn.Parameter(torch.from_numpy(rng.normal(0, 0.5, s).astype(np.float32))) for s in shapes]


def _run(config, path, steps, *, rounding="stochastic", sr_bits=32, lanes=8, lr=2e-3, shapes=None):
    shapes = shapes or [(5, 7), (13,), (3, 2, 2), (1,)]
    ps = _params(0, shapes)
    opt = LowPrecisionSGLD([{"params": ps[:2]}, {"params": ps[2:], "lr": lr / 2}], lr=lr, config=config, lanes=lanes,
                           weight_decay=0.05, seed=4, dataset_size=1, temperature=1.0, grad_rounding=rounding,
                           grad_sr_bits=sr_bits, path=path)
    gen = torch.Generator().manual_seed(1)
    for s in range(steps):
        for i, p in enumerate(ps):
            g = 10.0 ** torch.randint(-6, 2, p.shape, generator=gen) * torch.randn(p.shape, generator=gen)
            if s == 1 and i == 0:
                g.view(-1)[0] = float("inf")  # saturates
            p.grad = g
        if s == 2:
            ps[1].grad = None  # a parameter without a gradient is skipped
        opt.step()
    return ps, opt


def _states(ps, opt):
    return [{k: v.clone() for k, v in opt.state[p].items()} for p in ps]


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
@pytest.mark.parametrize(("name", "lanes", "lr", "sr_bits"), [
    ("w8-vc", 8, 2e-3, 32), ("w8-vc", 1024, 1e-3, 32), ("w8-lpf", 4, 2e-3, 5), ("w4-naive", 1, 0.5, 52),
    ("w16-sgd-f", 8, 1e-3, 32), ("w8-sgd-l", 3, 1e-3, 32),
])
def test_fixed_group_step_equals_reference(name, lanes, lr, sr_bits, rounding):
    runs = [_run(name, path, 4, rounding=rounding, sr_bits=sr_bits, lanes=lanes, lr=lr)
            for path in (None, "reference")]
    (pa, oa), (pb, ob) = runs
    cfg = preset(name, lanes)
    for a, b in zip(pa, pb, strict=True):
        assert torch.equal(a, b)
        wa, wb = oa.state[a]["words"], ob.state[b]["words"]
        assert wa.dtype == wb.dtype == word_dtype(cfg.state.width)
        assert torch.equal(wa, wb)
    for ra, rb in zip(oa._runtime, ob._runtime, strict=True):
        assert ra.engine is not None and rb.engine is not None and ra.grad_rng is not None
        assert ra.engine.rng == rb.engine.rng and ra.grad_rng == rb.grad_rng


@pytest.mark.parametrize("variant", ["vc", "lp_f"])
def test_bfp_step_equals_reference(variant):
    cfg = BfpConfig.paper(variant, lanes=8, max_lr=2e-3, temperature=1.0, dataset_size=1, weight_decay=0.05)
    (pa, oa), (pb, ob) = (_run(cfg, path, 3, lanes=8) for path in (None, "reference"))
    for a, b in zip(pa, pb, strict=True):
        assert torch.equal(a, b)
        sa, sb = oa.state[a], ob.state[b]
        assert sa["mant"].dtype == word_dtype(cfg.state.width)
        for k in sa:
            assert torch.equal(sa[k].long(), sb[k].long()), k


def test_word_dtypes():
    assert [word_dtype(w) for w in (2, 8, 9, 16, 17, 32, 33, 62)] == [torch.int8, torch.int8, torch.int16,
                                                                       torch.int16, torch.int32, torch.int32,
                                                                       torch.int64, torch.int64]


def test_nan_gradient_raises_before_the_kernel_changes_anything():
    ps, opt = _run("w8-vc", None, 2)
    before = [p.detach().clone() for p in ps], _states(ps, opt)
    rng_before = [(rt.engine.rng.copy(), rt.grad_rng.copy()) for rt in opt._runtime]
    for p in ps:
        p.grad = torch.zeros_like(p)
    ps[3].grad[0] = float("nan")
    with pytest.raises(ValueError, match="cannot quantize NaN"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before[0], ps, strict=True))
    for sa, p in zip(before[1], ps, strict=True):
        assert all(torch.equal(v, opt.state[p][k]) for k, v in sa.items())
    for (e, g), rt in zip(rng_before, opt._runtime, strict=True):
        assert rt.engine.rng == e and rt.grad_rng == g


def test_checkpoint_with_int64_words_loads_and_continues_identically():
    """An older checkpoint holds int64 words: it loads, the next step narrows them, and the run matches."""
    ps, opt = _run("w8-vc", None, 2)
    sd = opt.state_dict()
    old = {k: {n: (t.to(torch.int64) if n == "words" else t) for n, t in v.items()} for k, v in sd["state"].items()}
    buf = io.BytesIO()
    torch.save(dict(sd, state=old), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert all(v["words"].dtype == torch.int64 for v in loaded["state"].values())
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt2 = LowPrecisionSGLD([{"params": qs[:2]}, {"params": qs[2:], "lr": 1e-3}], lr=2e-3, config="w8-vc", lanes=8,
                            weight_decay=0.05, seed=4, dataset_size=1, temperature=1.0)
    opt2.load_state_dict(loaded)
    for p, q in zip(ps, qs, strict=True):
        p.grad = torch.full_like(p, 0.3)
        q.grad = torch.full_like(q, 0.3)
    opt.step()
    opt2.step()
    for p, q in zip(ps, qs, strict=True):
        assert torch.equal(p, q)
        assert opt2.state[q]["words"].dtype == torch.int8
        assert torch.equal(opt.state[p]["words"], opt2.state[q]["words"])
