"""The torch benchmark's inputs: ResNet-18 shapes, the training configuration, the float baselines."""

import math

import pytest

torch = pytest.importorskip("torch")

from emulator.spec.host import HyperParams, step_registers  # noqa: E402
from emulator.studies.torch_bench import bench_config, reference_style_vc_step, resnet18_shapes  # noqa: E402


def test_resnet18_shapes_are_the_cifar_model():
    shapes = resnet18_shapes()
    assert sum(math.prod(s) for s in shapes) == 11_173_962  # torchvision-style CIFAR ResNet-18, 10 classes
    assert len(shapes) == 62 and shapes[0] == (64, 3, 3, 3) and shapes[-2:] == [(10, 512), (10,)]


@pytest.mark.parametrize("variant", ["vc", "naive", "lp_f", "sgd_l", "sgd_f"])
def test_bench_config_takes_the_papers_hyper_parameters(variant):
    cfg = bench_config(variant)
    for temp in (1.0, 1e-3):
        regs = step_registers(cfg, HyperParams(0.5, temp, 50000, 5e-4))
        assert regs.step == 0.5 * 2**16 and regs.decay > 0


def test_reference_style_vc_step_stays_on_the_grid():
    gen = torch.Generator().manual_seed(0)
    lsb = 2.0**-8
    for var in (2e-5, 2e-8):  # branch A and branch B
        p = [torch.round(0.05 * torch.randn(1000, generator=gen) / lsb) * lsb]
        g = [0.05 * torch.randn(1000, generator=gen)]
        before = p[0].clone()
        reference_style_vc_step(p, g, 0.5, var, lsb, -0.5, 0.5 - lsb, gen)
        q = p[0] / lsb
        assert torch.equal(q, q.round()) and not torch.equal(p[0], before)
