"""Two real processes joined with gloo on the CPU, the way torchrun would start them."""

import os
import socket

import torch
import torch.multiprocessing as mp
from torch import nn

from rlgen import distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    device = distributed.init_distributed()
    try:
        torch.manual_seed(0)  # same initial weights on every rank, as DDP expects
        model = distributed.wrap_ddp(nn.Linear(3, 1), device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        # Each rank sees different data; DDP averages the gradients so weights stay equal.
        x = torch.full((4, 3), float(rank + 1))
        model(x).sum().backward()
        opt.step()
        dataset = list(range(10))
        sampler = distributed.distributed_sampler(dataset, shuffle=False)
        out[rank] = {
            "weight": distributed.unwrap(model).weight.detach().clone(),
            "mean": distributed.all_reduce_mean({"loss": float(rank)}),
            "indices": list(sampler),
            "main": distributed.is_main_process(),
            "world": distributed.world_size(),
        }
    finally:
        distributed.cleanup()


def test_single_process_fallbacks():
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.is_main_process()
    module = nn.Linear(2, 2)
    assert distributed.wrap_ddp(module, torch.device("cpu")) is module
    assert distributed.distributed_sampler([1, 2, 3]) is None
    assert distributed.all_reduce_mean({"x": 2}) == {"x": 2.0}


def test_two_process_ddp_all_reduce_and_sampler():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        results = dict(out)
    assert torch.equal(results[0]["weight"], results[1]["weight"])
    # Average gradient of sum(W x) over ranks: x = 1 and 2 (4 rows each) -> mean 6 per weight.
    torch.manual_seed(0)
    expected = nn.Linear(3, 1).weight.detach() - 0.1 * 6.0
    torch.testing.assert_close(results[0]["weight"], expected)
    assert results[0]["mean"] == {"loss": 0.5} == results[1]["mean"]
    assert results[0]["indices"] == [0, 2, 4, 6, 8] and results[1]["indices"] == [1, 3, 5, 7, 9]
    assert results[0]["main"] and not results[1]["main"]
    assert results[0]["world"] == 2
