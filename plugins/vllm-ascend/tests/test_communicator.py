"""The device communicator's collectives between two emulated workers (gloo),
against the same sums and concatenations done by hand, eager and replayed from
an emulated ACL graph."""

from __future__ import annotations

import pytest
import torch

from vllm_harness.fixtures import free_port

pytestmark = pytest.mark.xdist_group("communicator")


def _collectives(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    from vllm_ascend.communicator import NPUCommunicator

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    group = dist.new_group([0, 1], backend="gloo")
    comm = NPUCommunicator(group, torch.device("cpu"), group, unique_name="ep:0")
    x = torch.arange(24, dtype=torch.float32).reshape(6, 4) + 100 * rank
    # uneven MoE-style dispatch: rank 0 sends 1 row to itself and 5 to rank 1,
    # rank 1 sends 4 rows to rank 0 and 2 to itself
    scatter = [[1, 5], [4, 2]][rank]
    gather = [[1, 4], [5, 2]][rank]
    results[rank] = {
        "all_reduce": comm.all_reduce(x.clone()),
        "all_gather": comm.all_gather(x, dim=-1),
        "reduce_scatter": comm.reduce_scatter(x, dim=-1),
        "all_gatherv": comm.all_gatherv(x[: rank + 1], dim=0, sizes=[1, 2]),
        # MoE combine with data parallelism: rank 0 keeps the sums of 2 rows, rank 1 of 4
        "reduce_scatterv": comm.reduce_scatterv(x, dim=0, sizes=[2, 4]),
        "all_to_all": comm.all_to_all(x),
        "all_to_all_uneven": comm.all_to_all(x, scatter, gather),
    }
    # inside an emulated ACL graph: recorded as kernels, run again on each replay
    from vllm_ascend import npu_graphs, npu_ops

    npu_ops.select(emulated=True)
    y = x.clone()
    graph = npu_graphs.new_graph()
    with npu_graphs.capture(graph):
        gathered = comm.all_gather(comm.all_reduce(y * 2) + 1, dim=0)
    results[f"graph_kernels{rank}"] = [task.name for task in graph.tasks]
    y.copy_(x + 1000)
    graph.replay()
    results[f"graph{rank}"] = gathered.clone()
    try:
        comm.all_to_all(x, [3, 4], [1, 4])
    except ValueError as error:
        results[f"error{rank}"] = str(error)
    dist.destroy_process_group()


def test_collectives_match_math():
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
    xs = [torch.arange(24, dtype=torch.float32).reshape(6, 4) + 100 * r for r in (0, 1)]
    total = xs[0] + xs[1]
    for rank in (0, 1):
        got = results[rank]
        torch.testing.assert_close(got["all_reduce"], total)
        torch.testing.assert_close(got["all_gather"], torch.cat(xs, dim=-1))
        torch.testing.assert_close(got["reduce_scatter"], total[:, 2 * rank: 2 * rank + 2])
        torch.testing.assert_close(got["all_gatherv"], torch.cat([xs[0][:1], xs[1][:2]]))
        torch.testing.assert_close(got["reduce_scatterv"], total[:2] if rank == 0 else total[2:])
        # equal slices: rank r receives every rank's r-th half, in rank order
        torch.testing.assert_close(got["all_to_all"],
                                   torch.cat([xs[0][3 * rank: 3 * rank + 3],
                                              xs[1][3 * rank: 3 * rank + 3]]))
        assert "scatter_sizes sum to 7" in results[f"error{rank}"]
        assert results[f"graph_kernels{rank}"] == [
            "aten.mul", "c10d.allreduce_", "aten.add", "c10d.allgather_", "aten.cat"]
        replayed = 2 * (xs[0] + xs[1] + 2000) + 1  # the replay's inputs, not the capture's
        torch.testing.assert_close(results[f"graph{rank}"], torch.cat([replayed, replayed]))
    torch.testing.assert_close(results[0]["all_to_all_uneven"], torch.cat([xs[0][:1],
                                                                           xs[1][:4]]))
    torch.testing.assert_close(results[1]["all_to_all_uneven"], torch.cat([xs[0][1:],
                                                                           xs[1][4:]]))
