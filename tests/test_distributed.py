"""Data-parallel R-Drop: two gloo workers on CPU log what one process with
``--update-freq 2`` logs over the same batches.

Each update, fairseq seeds every worker with ``--seed`` + update number, so both
workers draw their dropout masks from the same state, while one process with
``--update-freq 2`` draws the second micro-batch's masks from a stream the first one
advanced.  Those masks decide the KL term (and, through it, every later update), so
the single process here reseeds each micro-batch the way each worker is seeded
(``fairseq_runs.reseeded_micro_batches``).  Then both runs compute the same
per-token terms and differ only where the workers' sums meet: gradients and metric
sums are added across workers instead of within one process.
"""
import math

import pytest

from fairseq_runs import finish, free_port, start_train, toy_data, train_args, train_in_process, train_inner_logs

UPDATES = 3  # the 6 batches of the toy corpus, 2 per update
METRICS = ("loss", "nll_loss", "kl_loss", "gnorm")
# The workers' metric sums are added in float64 by fairseq's stat sync, the single
# process sums float32 numbers: measured differences are <= 1.1e-7 relative (gnorm:
# identical).  Without the reseeding they are 0.2-3%, and any error in how the
# workers' terms are combined is larger still.
REL_TOL = 1e-6


def worker_args(data, save_dir, rank, port, ddp_backend, *extra):
    return train_args(
        data, save_dir, "--max-update", str(UPDATES), "--no-save",
        "--distributed-world-size", "2", "--distributed-rank", str(rank),
        "--distributed-backend", "gloo", "--distributed-no-spawn", "--ddp-backend", ddp_backend,
        "--distributed-init-method", f"tcp://127.0.0.1:{port}", *extra,
    )


# pytorch_ddp is what GPU users get by default (c10d); its reducer hooks each parameter's gradient,
# which per-copy dropout rates reach through two forward passes before one backward.
@pytest.mark.e2e
@pytest.mark.parametrize("ddp_backend, extra", [
    ("legacy_ddp", ()),
    ("pytorch_ddp", ()),
    ("pytorch_ddp", ("--rdrop-dropout-rates", "0.1,0.3")),
])
def test_two_workers_match_one_process_with_update_freq_2(tmp_path_factory, tmp_path, ddp_backend, extra):
    data = toy_data(tmp_path_factory)
    port = free_port()
    workers = [start_train(worker_args(data, tmp_path / "ddp", rank, port, ddp_backend, *extra),
                           reseed_micro_batches=True)
               for rank in (0, 1)]
    single = train_in_process(
        train_args(data, tmp_path / "single", "--max-update", str(UPDATES), "--no-save", "--update-freq", "2", *extra),
        reseed_micro_batches=True,
    )
    outputs = [finish(worker) for worker in workers]
    parallel = train_inner_logs(outputs[0])

    assert [r["num_updates"] for r in parallel] == [r["num_updates"] for r in single] == [1, 2, 3]
    assert [r["bsz"] for r in parallel] == [r["bsz"] for r in single] == [32] * UPDATES
    for update, (ddp, one) in enumerate(zip(parallel, single), start=1):
        for key in METRICS:
            assert ddp[key] > 0, (update, key)
            assert math.isclose(ddp[key], one[key], rel_tol=REL_TOL), (update, key, ddp[key], one[key])
