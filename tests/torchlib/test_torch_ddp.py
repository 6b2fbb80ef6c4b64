"""DistributedDataParallel: two gloo ranks on CPU keep bit-identical weights and words (fixed and BFP)."""

import socket

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
mp = pytest.importorskip("torch.multiprocessing")

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir, steps, kind):
    from emulator.optim import LowPrecisionSGLD
    from emulator.spec.bfp import BfpConfig
    from emulator.spec.datapath import DatapathConfig, Variant
    from emulator.spec.formats import FixedFormat

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same float init on every rank (DDP also broadcasts rank 0's)
        model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 1))
        init = [p.detach().clone() for p in model.parameters()]
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        u = dict(signed=False)
        if kind == "bfp":  # one exponent per row of dim 0, VC with the paper's 8-bit BFP formats
            cfg = BfpConfig.paper("vc", lanes=8, max_lr=0.05, temperature=1.0, dataset_size=64, weight_decay=0.0)
        else:
            cfg = DatapathConfig(Variant.VC, weight=FixedFormat(8, 4), grad=FixedFormat(8, 4),
                                 step=FixedFormat(16, 16, **u), noise=FixedFormat(16, 16, **u), lanes=8)
        opt = LowPrecisionSGLD(ddp.parameters(), lr=0.05, config=cfg, seed=123, dataset_size=64)
        g = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
        for _ in range(steps):
            x = torch.randn(16, 6, generator=g)
            y = x.sum(1, keepdim=True)
            opt.zero_grad()
            torch.nn.functional.mse_loss(ddp(x), y).backward()
            opt.step()
        keys = ("mant", "exp") if kind == "bfp" else ("words",)
        words = [opt.state[p][k].clone() for p in model.parameters() for k in keys]
        weights = [p.detach().clone() for p in model.parameters()]
        torch.save({"words": words, "weights": weights, "init": init}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["fixed", "bfp"])
def test_ddp_replicas_stay_bit_identical(tmp_path, kind):
    world, steps = 2, 6
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path), steps, kind), nprocs=world, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for a, b in zip(r0["words"], r1["words"], strict=True):
        assert a.dtype == torch.int64 and torch.equal(a, b)
    for a, b in zip(r0["weights"], r1["weights"], strict=True):
        assert torch.equal(a, b)
    assert len(r0["words"]) == (8 if kind == "bfp" else 4)
    assert all(not torch.equal(w, i) for w, i in zip(r0["weights"], r0["init"], strict=True))  # training moved them
