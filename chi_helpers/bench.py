"""`python -m chi_helpers bench tracking|server`: what tracking costs on this machine, as printed figures.

`tracking`:
- how long the local stack takes to answer /health from a cold start;
- one `log_metrics` call of six values, synchronous and asynchronous (enqueue only);
- per-epoch overhead: epochs of the real training code with and without tracking, on the same
  data and model, in alternating blocks; reported as the ratio of median epoch times, for
  asynchronous logging (what train_mlflow.py does) and synchronous logging.

`server`: log_batch calls per second from one and from four client processes, with SQLite and
with PostgreSQL (+ the S3 endpoint) behind the server, and the MB/s of an artifact upload.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from chi_helpers.local import stack as local_stack
from chi_helpers.local import processes
from chi_helpers.local import sample_data
from chi_helpers.local.target import WORKSPACE
from chi_helpers.progress import Clock


def _median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def log_metrics_cost(calls: int, clock: Clock) -> dict:
    import mlflow

    metrics = {k: 0.5 for k in ("epoch_time", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "trainable_params")}
    costs: dict[str, list[float]] = {"sync": [], "async": []}
    mlflow.set_experiment("bench-tracking")
    with mlflow.start_run():
        for mode in ("sync", "async"):
            for step in range(calls):
                start = time.perf_counter()
                mlflow.log_metrics(metrics, step=step, synchronous=(mode == "sync"))
                costs[mode].append(time.perf_counter() - start)
            clock.say(f"log_metrics {mode}: {calls} calls done")
        start = time.perf_counter()
        mlflow.flush_async_logging()
        drain = time.perf_counter() - start
    return {"sync_ms": _median_ms(costs["sync"]), "async_ms": _median_ms(costs["async"]), "async_drain_s": drain}


def epoch_overhead(data_dir: Path, image_size: int, blocks: int, epochs_per_block: int, clock: Clock) -> dict:
    """Median tracked epoch time / median untracked epoch time, for async and sync logging."""
    import mlflow
    import torch
    from torch import nn

    sys.path.insert(0, str(WORKSPACE))
    import food11_training as ft

    config = {**ft.CONFIG, "data_dir": str(data_dir), "image_size": image_size, "pretrained": False}
    ft.seed_everything(config["seed"])
    train_loader, val_loader, _ = ft.make_loaders(config)
    model = ft.build_model(config)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    device = torch.device("cpu")

    def epoch(log=None, step=0) -> float:
        start = time.time()
        train_loss, train_acc = ft.train_one_epoch(model, train_loader, criterion, optimizer, device)
        val_loss, val_acc = ft.evaluate(model, val_loader, criterion, device)
        metrics = {"epoch_time": time.time() - start, "train_loss": train_loss, "train_accuracy": train_acc,
                   "val_loss": val_loss, "val_accuracy": val_acc, "trainable_params": ft.count_trainable(model)}
        if log is not None:
            mlflow.log_metrics(metrics, step=step, synchronous=(log == "sync"))
        return time.time() - start

    epoch()  # warm-up: first-touch allocations and thread pools
    times: dict[str, list[float]] = {"none": [], "async": [], "sync": []}
    mlflow.set_experiment("bench-tracking")
    for block in range(blocks):
        for mode in ("none", "async", "sync"):
            if mode == "none":
                times[mode] += [epoch() for _ in range(epochs_per_block)]
                continue
            # As in train_mlflow.py: a run with system metrics, metrics logged once per epoch.
            with mlflow.start_run(log_system_metrics=True):
                times[mode] += [epoch(mode, step) for step in range(epochs_per_block)]
        clock.say(f"overhead: block {block + 1}/{blocks} done")
    base = statistics.median(times["none"])
    return {
        "epoch_s": base,
        "ratio_async": statistics.median(times["async"]) / base,
        "ratio_sync": statistics.median(times["sync"]) / base,
        "epochs_each": len(times["none"]),
    }


def bench_tracking(calls: int = 30, blocks: int = 3, epochs_per_block: int = 4, image_size: int = 64,
                   per_class: int = 24) -> dict:
    import mlflow

    clock = Clock()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        tmp = Path(tmp)
        clock.say("making a data set for the epochs")
        sample_data.make_sample_dataset(tmp / "Food-11", per_class={"training": per_class, "validation": per_class // 2, "evaluation": 1})
        port = processes.free_port()
        start = time.monotonic()
        stack = local_stack.up(tmp / "stack", port=port, clock=clock)
        results["stack_ready_s"] = time.monotonic() - start
        try:
            mlflow.set_tracking_uri(stack.url)
            results.update(log_metrics_cost(calls, clock))
            results.update(epoch_overhead(tmp / "Food-11", image_size, blocks, epochs_per_block, clock))
        finally:
            mlflow.set_tracking_uri(None)
            local_stack.down(tmp / "stack", clock=clock)
    print()
    print(f"stack ready (cold start, SQLite):        {results['stack_ready_s']:.1f} s")
    print(f"log_metrics, 6 values, synchronous:      {results['sync_ms']:.1f} ms per call (median of {calls})")
    print(f"log_metrics, 6 values, asynchronous:     {results['async_ms']:.2f} ms per call to enqueue "
          f"(queue drained {results['async_drain_s'] * 1000:.0f} ms after the last call)")
    print(f"untracked epoch ({image_size} px, {per_class * 11} photos):  {results['epoch_s']:.2f} s (median of {results['epochs_each']})")
    print(f"tracked / untracked epoch time, async:   {results['ratio_async']:.3f}  (target <= 1.01)")
    print(f"tracked / untracked epoch time, sync:    {results['ratio_sync']:.3f}")
    return results


def _log_batch_worker(args: tuple[str, str, int]) -> int:
    """One client process: its own run, `calls` log_batch calls of ten metrics. Returns calls made."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    url, experiment_id, calls = args
    client = MlflowClient(url)
    run_id = client.create_run(experiment_id).info.run_id
    for step in range(calls):
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(f"m{i}", float(step), now, step) for i in range(10)])
    client.set_terminated(run_id)
    return calls


def log_batch_rate(url: str, clients: int, calls: int) -> float:
    """log_batch calls per second, summed over `clients` concurrent client processes."""
    from concurrent.futures import ProcessPoolExecutor

    from mlflow import MlflowClient

    experiment_id = MlflowClient(url).create_experiment(f"bench-{clients}-{time.monotonic_ns()}")
    with ProcessPoolExecutor(clients) as pool:
        list(pool.map(_log_batch_worker, [(url, experiment_id, 2)] * clients))  # warm up the workers
        start = time.perf_counter()
        done = sum(pool.map(_log_batch_worker, [(url, experiment_id, calls)] * clients))
    return done / (time.perf_counter() - start)


def artifact_upload_rate(url: str, megabytes: int, folder: Path) -> float:
    """MB/s of one `log_artifact` through the server (proxied artifacts) to its destination."""
    from mlflow import MlflowClient

    client = MlflowClient(url)
    run_id = client.create_run(client.create_experiment(f"bench-upload-{time.monotonic_ns()}")).info.run_id
    blob = folder / "blob.bin"
    blob.write_bytes(os.urandom(megabytes << 20))
    start = time.perf_counter()
    client.log_artifact(run_id, str(blob))
    return megabytes / (time.perf_counter() - start)


def bench_server(calls: int = 200, megabytes: int = 64,
                 postgres_uri: str = "postgresql+psycopg://postgres@127.0.0.1:5432") -> dict:
    """Tracking-server throughput: SQLite vs PostgreSQL backends, and artifact upload to S3."""
    from chi_helpers.local import postgres

    clock = Clock()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        tmp = Path(tmp)
        database = f"{postgres_uri}/mlflow_bench_{os.getpid()}"
        setups = {
            "SQLite + local folder": dict(),
            "PostgreSQL + S3": dict(backend_store_uri=database, object_store=True),
        }
        try:
            for name, options in setups.items():
                state_dir = tmp / name.split()[0]
                stack = local_stack.up(state_dir, port=processes.free_port(), clock=clock, **options)
                try:
                    row = {}
                    for clients in (1, 4):
                        row[f"{clients} client(s)"] = log_batch_rate(stack.url, clients, calls)
                        clock.say(f"{name}: {clients} client(s): {row[f'{clients} client(s)']:.0f} log_batch/s")
                    row["upload MB/s"] = artifact_upload_rate(stack.url, megabytes, tmp)
                    clock.say(f"{name}: artifact upload {row['upload MB/s']:.0f} MB/s")
                    results[name] = row
                finally:
                    local_stack.down(state_dir, clock=clock)
        finally:
            postgres.drop_database(database)
    print()
    print(f"{'backend':<24}{'log_batch/s, 1 client':>24}{'4 clients':>12}{'upload MB/s':>14}")
    for name, row in results.items():
        print(f"{name:<24}{row['1 client(s)']:>24.0f}{row['4 client(s)']:>12.0f}{row['upload MB/s']:>14.0f}")
    print(f"(each log_batch: 10 metrics; {calls} calls per client; one {megabytes} MB artifact through the server)")
    return results
