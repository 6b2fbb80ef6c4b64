"""Engines under failure (issue 13, item 7): a step that raises leaves the engine exactly as it was;
state dicts carry the configuration's identity and format version; masked arrays are refused."""

from __future__ import annotations

import numpy as np
import pytest

import emulator.engines.bfp_engine as bfp_engine_mod
import emulator.engines.numpy_engine as numpy_engine_mod
from emulator.engines.bfp_engine import BfpEngine
from emulator.engines.numpy_engine import STATE_FORMAT, NumpyEngine
from emulator.spec.bfp import BfpConfig, BfpFormat, BfpTensor, bfp_registers
from emulator.spec.host import HyperParams, step_registers
from emulator.spec.presets import preset


class Boom(Exception):
    pass


def _boom(*args: object, **kw: object) -> None:
    raise Boom("simulated failure after the random words were drawn")


def _words(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.integers(-100, 100, n), rng.integers(-100, 100, n)


def _boom_midway(cfg: object, regs: object, s0: np.ndarray, s1: np.ndarray, *args: object, **kw: object) -> None:
    s0 += 1  # a kernel that fails after it moved the lane states it was given
    s1 += 1
    raise Boom("simulated kernel failure midway")


@pytest.mark.parametrize("path", ["reference", "kernel"])
def test_numpy_step_that_raises_leaves_the_lanes_as_they_were(monkeypatch, path) -> None:
    cfg = preset("w8-vc", 4)
    regs = step_registers(cfg, HyperParams(2e-3))
    theta, grad = _words(37)
    eng, fresh = NumpyEngine(cfg, 1, path=path), NumpyEngine(cfg, 1, path=path)
    with monkeypatch.context() as m:
        if path == "reference":
            m.setattr(numpy_engine_mod, "update", _boom)  # fails after stream_words advanced the lanes
        else:
            m.setattr(numpy_engine_mod.cpu_kernels, "fixed_update", _boom_midway)
        with pytest.raises(Boom):
            eng.step(theta, grad, regs)
    assert eng.rng == fresh.rng
    a, b = eng.step(theta, grad, regs), fresh.step(theta, grad, regs)
    assert np.array_equal(a.state, b.state) and np.array_equal(a.weight, b.weight)


def _bfp_cfg() -> BfpConfig:
    return BfpConfig.paper("vc", lanes=3, max_lr=0.5, weight_decay=5e-4, temperature=1.0, dataset_size=1000)


def _bfp_inputs(cfg: BfpConfig) -> tuple[BfpTensor, BfpTensor]:
    x = np.random.default_rng(5).standard_normal((4, 6)) * 0.1
    return cfg.state.quantize(x), cfg.grad.quantize(x)


@pytest.mark.parametrize("path", ["reference", "kernel"])
def test_bfp_step_that_raises_leaves_the_lanes_as_they_were(monkeypatch, path) -> None:
    cfg = _bfp_cfg()
    regs = bfp_registers(cfg, HyperParams(0.5, 1.0, 1000, 5e-4))
    th, g = _bfp_inputs(cfg)
    eng, fresh = BfpEngine(cfg, 2, path=path), BfpEngine(cfg, 2, path=path)
    with monkeypatch.context() as m:
        if path == "reference":
            m.setattr(bfp_engine_mod, "update", _boom)
        else:
            m.setattr(bfp_engine_mod.cpu_kernels, "bfp_update", _boom_midway)
        with pytest.raises(Boom):
            eng.step(th, g, regs)
    assert eng.rng == fresh.rng
    a, b = eng.step(th, g, regs), fresh.step(th, g, regs)
    assert np.array_equal(a.state.mant, b.state.mant) and np.array_equal(a.state.exp, b.state.exp)


def test_torch_steps_that_raise_leave_the_lanes_as_they_were(monkeypatch) -> None:
    torch = pytest.importorskip("torch", reason="needs torch (bash scripts/setup.sh torch)")
    import emulator.engines.torch_bfp_engine as tbe
    import emulator.engines.torch_engine as te

    cfg = preset("w8-vc", 4)
    regs = step_registers(cfg, HyperParams(2e-3))
    theta, grad = (torch.from_numpy(a) for a in _words(37))
    eng, fresh = te.TorchEngine(cfg, 1, path="reference"), te.TorchEngine(cfg, 1, path="reference")
    with monkeypatch.context() as m:
        m.setattr(te, "torch_update", _boom)
        with pytest.raises(Boom):
            eng.step(theta, grad, regs)
    assert eng.rng == fresh.rng
    fused = te.TorchEngine(cfg, 1, path="fused")
    grad_rng = te.TorchLaneRng.seeded(cfg.rng, 9, cfg.lanes, 1)
    before = grad_rng.copy()
    with monkeypatch.context() as m:
        m.setattr(te, "_update", _boom)  # inside the fused loop, after both generators stepped
        with pytest.raises(Boom):
            fused.step_quantize(theta, torch.randn(37, dtype=torch.float64) * 0.1, regs, grad_rng=grad_rng)
    assert fused.rng == fresh.rng and grad_rng == before
    kernel = te.TorchEngine(cfg, 1, path="kernel")
    with monkeypatch.context() as m:
        m.setattr(te.cpu_kernels, "fixed_quantize_update", _boom_midway)  # the compiled CPU path
        with pytest.raises(Boom):
            kernel.step_quantize(theta, torch.randn(37, dtype=torch.float64) * 0.1, regs, grad_rng=grad_rng)
    assert kernel.rng == fresh.rng and grad_rng == before
    bcfg = _bfp_cfg()
    bregs = bfp_registers(bcfg, HyperParams(0.5, 1.0, 1000, 5e-4))
    th, g = _bfp_inputs(bcfg)
    tth = BfpTensor(torch.from_numpy(th.mant), torch.from_numpy(th.exp))
    tg = BfpTensor(torch.from_numpy(g.mant), torch.from_numpy(g.exp))
    beng, bfresh = tbe.TorchBfpEngine(bcfg, 2, path="reference"), tbe.TorchBfpEngine(bcfg, 2)
    with monkeypatch.context() as m:
        m.setattr(tbe, "update", _boom)
        with pytest.raises(Boom):
            beng.step(tth, tg, bregs)
    assert beng.rng == bfresh.rng


def test_state_dict_carries_the_configuration_and_refuses_another() -> None:
    w16, w8 = NumpyEngine(preset("w16-vc", 4), 1), NumpyEngine(preset("w8-vc", 4), 1)
    sd = w16.state_dict()
    assert sd["format"] == STATE_FORMAT and sd["config"] == repr(preset("w16-vc", 4))
    with pytest.raises(ValueError, match=r"state_dict was saved for configuration DatapathConfig\(.*width=16"):
        w8.load_state_dict(sd)  # same generator, lanes and words: loaded silently before
    with pytest.raises(ValueError, match=r"state_dict lacks \['config'\] \(keys present: \['format', 'rng'\]\)"):
        w8.load_state_dict({"format": STATE_FORMAT, "rng": w8.rng.state_dict()})
    legacy = NumpyEngine(preset("w8-vc", 4), 5)
    legacy.load_state_dict({"rng": w8.rng.state_dict()})  # format 0 (an older release): lane states only
    assert legacy.rng == w8.rng
    with pytest.raises(ValueError, match="different generator, lane count or rng_words"):
        NumpyEngine(preset("w8-vc", 2), 5).load_state_dict({"rng": w8.rng.state_dict()})
    with pytest.raises(ValueError, match=r"state_dict format 99, this engine reads format 1"):
        w8.load_state_dict({**w8.state_dict(), "format": 99})
    b = BfpEngine(_bfp_cfg(), 1)
    with pytest.raises(ValueError, match="state_dict was saved for configuration"):
        b.load_state_dict(w8.state_dict())
    same = NumpyEngine(preset("w8-vc", 4), 7)
    same.load_state_dict(w8.state_dict())
    assert same.rng == w8.rng


def test_masked_arrays_are_refused() -> None:
    cfg = preset("w8-vc", 4)
    regs = step_registers(cfg, HyperParams(2e-3))
    theta, grad = _words(8)
    masked = np.ma.masked_array(theta, mask=[True] + [False] * 7)
    with pytest.raises(TypeError, match="theta is a numpy masked array; the datapath has no mask"):
        NumpyEngine(cfg, 1).step(masked, grad, regs)
    with pytest.raises(TypeError, match="values is a numpy masked array"):
        cfg.weight.quantize(np.ma.masked_array([0.5, 1.0], mask=[False, True]))
    with pytest.raises(TypeError, match="values is a numpy masked array"):
        BfpFormat(8, 8).quantize(np.ma.masked_array(np.ones((2, 2)), mask=[[0, 1], [0, 0]]))
    bcfg = _bfp_cfg()
    th, g = _bfp_inputs(bcfg)
    with pytest.raises(TypeError, match="theta mantissas is a numpy masked array"):
        BfpEngine(bcfg, 1).step(BfpTensor(np.ma.masked_array(th.mant), th.exp), g,
                                bfp_registers(bcfg, HyperParams(0.5, 1.0, 1000, 5e-4)))
