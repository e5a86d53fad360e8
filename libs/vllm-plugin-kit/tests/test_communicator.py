"""Gloo collectives between two spawned processes, against plain math."""

from __future__ import annotations

import socket

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collectives(rank: int, port: int, results) -> None:
    import torch.distributed as dist
    from vllm_plugin_kit.communicator import GlooCommunicator

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    group = dist.new_group([0, 1], backend="gloo")
    comm = GlooCommunicator(group, torch.device("cpu"), group, unique_name="tp:0")
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4) + 100 * rank
    results[rank] = {
        "all_reduce": comm.all_reduce(x.clone()),
        "all_gather": comm.all_gather(x, dim=-1),
        "reduce_scatter": comm.reduce_scatter(x[:, :4], dim=-1),
        "all_gatherv": comm.all_gatherv(x[: rank + 1], dim=0, sizes=[1, 2]),
    }
    dist.destroy_process_group()


def test_gloo_collectives_match_math():
    ctx = torch.multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        port = free_port()
        procs = [ctx.Process(target=_collectives, args=(r, port, results)) for r in (0, 1)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        results = dict(results)
    xs = [torch.arange(12, dtype=torch.float32).reshape(3, 4) + 100 * r for r in (0, 1)]
    for rank in (0, 1):
        got = results[rank]
        torch.testing.assert_close(got["all_reduce"], xs[0] + xs[1])
        torch.testing.assert_close(got["all_gather"], torch.cat(xs, dim=-1))
        total = xs[0] + xs[1]
        torch.testing.assert_close(got["reduce_scatter"], total[:, 2 * rank: 2 * rank + 2])
        torch.testing.assert_close(got["all_gatherv"], torch.cat([xs[0][:1], xs[1][:2]]))
