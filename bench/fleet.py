"""Fleet benchmark: how many devices one fedge server holds and drives through rounds.

``python -m bench.fleet`` runs, for N = 100, 1,000 and 10,000 simulated devices:

* one real server process (``serve``): :class:`~fedge.server.transport.FederationServer`
  (mTLS, signed tasks, default ``server.*`` limits) + :class:`~fedge.server.grpc_grid.GrpcGrid`
  + ``CompressedStrategy(FedAvg)`` on the digits model, every device sampled every
  round, central evaluation after each round;
* device processes (``devices``), each a few thousand lightweight devices on one
  asyncio loop: raw ``grpc.aio`` stubs, each with its own ``fedge-certs`` certificate
  and TLS connection. A device joins, long-polls, and on a Task heartbeats once (as
  a device does while it trains) and pushes a real-size Update (the delta of the
  task's model, fp32, as the round's codec says), then polls again.

It reports rounds per minute, round latency (min, median, max), and the server's
peak RSS and thread count, plus the machine's load. With ``--idle`` N devices only
join and hold long polls (no rounds): the server's RSS with that many connected.
Results: ``bench/results/fleet.json`` and ``fleet.md``.

Written by hand because no load generator speaks fedge's chunked, signed protocol with
per-device mTLS identities; the devices reuse fedge's own framing and codecs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
DEVICES_PER_PROCESS = 2500
CONNECT_AT_ONCE = 100  # TLS handshakes in flight per device process


# -- server process -----------------------------------------------------------------------------
def _proc_status(pid: int | str = "self") -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
        elif key == "Threads":
            out[key] = int(value)
    return out


def serve(args: argparse.Namespace) -> None:
    """Run the server; answer ``stats`` on stdin with a JSON line; run ``--rounds`` rounds."""
    import logging

    import torch
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.serverapp.strategy import FedAvg

    from fedge.client import TrainConfig
    from fedge.conf.schema import ServerConfig
    from fedge.server.evaluation import CentralEvaluator
    from fedge.server.federation import run_federation
    from fedge.server.grpc_grid import GrpcGrid
    from fedge.server.transport import FederationServer, ServerCredentials
    from fedge.strategies import CompressedStrategy
    from fedge.tasks.digits import DigitsTask

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    settings = ServerConfig(address=args.address, join_timeout_s=args.join_timeout)
    server = FederationServer(settings, ServerCredentials.from_dir(args.certs), ["fp32"]).start()
    grid = GrpcGrid(server)
    lock = threading.Lock()

    def say(payload: dict[str, Any]) -> None:
        with lock:
            print(json.dumps(payload), flush=True)

    def answer_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "stats":
                say({**server.stats(), **{"rss_bytes": _proc_status()["VmRSS"], "peak_rss_bytes": _proc_status()["VmHWM"],
                     "threads": _proc_status()["Threads"], "live": len(server.registry.live_node_ids())}})
            elif line.strip() == "quit":
                break
        os._exit(0)

    say({"address": server.address})
    threading.Thread(target=answer_stdin, daemon=True).start()
    if args.rounds <= 0:
        threading.Event().wait()
    task = DigitsTask()
    data = task.load()
    grid.wait_for_nodes(args.devices)
    say({"joined": args.devices})
    torch.manual_seed(0)
    strategy = CompressedStrategy(
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=args.devices, min_train_nodes=args.devices)
    )

    def on_round(record: Any) -> None:
        say({"round": record.round, "wall_s": record.wall_s, "replies": record.replies, "failures": record.failures,
             "accuracy": record.accuracy, "threads": _proc_status()["Threads"], "rss_bytes": _proc_status()["VmRSS"]})

    run_federation(strategy, grid, ArrayRecord(task.build_model().state_dict()), CentralEvaluator(task, data.test),
                   args.rounds, ConfigRecord(TrainConfig(local_steps=1).to_config()), on_round=on_round)
    grid.close()
    say({"done": True, "peak_rss_bytes": _proc_status()["VmHWM"]})
    threading.Event().wait()


# -- device process -------------------------------------------------------------------------------
async def _device(
    address: str, device: str, certs: Any, gate: asyncio.Semaphore, counters: dict[str, int], idle: bool
) -> None:
    import grpc
    import grpc.aio
    import numpy as np

    from fedge.protos.codecs import decode_update, encode_update
    from fedge.protos.codecs.plan import UplinkPlan
    from fedge.protos import config_values
    from fedge.protos.transfer import Reassembler, chunks
    from fedge.protos.v1 import federation_pb2 as fpb
    from fedge.protos.v1 import task_pb2, tensor_pb2

    service = "/fedge.v1.Federation/"
    creds = grpc.ssl_channel_credentials(
        certs.ca.read_bytes(), certs.device_key(device).read_bytes(), certs.device(device).read_bytes()
    )
    channel = grpc.aio.secure_channel(address, creds)
    join, pull = channel.unary_unary(service + "Join"), channel.unary_stream(service + "PullTask")
    push, beat = channel.stream_unary(service + "PushUpdate"), channel.unary_unary(service + "Heartbeat")
    async with gate:
        while True:
            try:
                reply = fpb.JoinReply.FromString(await join(
                    fpb.JoinRequest(device_id=device, codecs=["fp32"], protocol_version=1).SerializeToString(), timeout=120
                ))
                break
            except grpc.aio.AioRpcError:
                counters["join_retries"] += 1
                await asyncio.sleep(1.0)
    counters["joined"] += 1
    while True:
        try:
            joiner = Reassembler(1 << 28)
            async for data in pull(fpb.PullRequest(wait_s=30).SerializeToString(), timeout=90):
                joiner.add(fpb.Chunk.FromString(data))
            if joiner.header is None or joiner.header.status == fpb.PULL_STATUS_NO_TASK:
                continue
            if joiner.header.status == fpb.PULL_STATUS_FINISHED:
                return
            if idle:
                continue
            task = task_pb2.Task.FromString(joiner.finish().payload)
            await beat(fpb.HeartbeatRequest(task_id=task.task_id).SerializeToString(), timeout=30)
            model = decode_update(task.model)
            plan = UplinkPlan.from_config(config_values.from_wire(task.config))
            delta = {k: np.full_like(v, 1e-3) for k, v in model.items()}
            update = task_pb2.Update(
                task_id=task.task_id, node_id=reply.node_id,
                update=encode_update(delta, plan.codec, tensor_pb2.UPDATE_KIND_DELTA, base_round=task.server_round - 1),
                metrics={"num-examples": 10.0, "train_loss": 1.0},
            ).SerializeToString()

            async def messages(payload: bytes = update, task_id: str = task.task_id):
                for message in chunks(payload, task_id, reply.max_chunk_bytes or 1 << 20):
                    yield message.SerializeToString()

            done = fpb.PushReply.FromString(await push(messages(), timeout=120))
            counters["pushed" if done.accepted else "refused"] += 1
        except grpc.aio.AioRpcError as exc:
            counters[f"error_{exc.code().name}"] = counters.get(f"error_{exc.code().name}", 0) + 1
            await asyncio.sleep(1.0)


def devices(args: argparse.Namespace) -> None:
    """Run devices ``--first`` .. ``--first + --count - 1`` on one loop; report counters on stdout."""
    from collections import defaultdict

    from fedge.server.certs import CertDir

    async def main() -> None:
        counters: dict[str, int] = defaultdict(int)
        gate = asyncio.Semaphore(CONNECT_AT_ONCE)
        certs = CertDir(Path(args.certs))
        tasks = [
            asyncio.create_task(_device(args.address, str(i), certs, gate, counters, args.idle))
            for i in range(args.first, args.first + args.count)
        ]

        async def report() -> None:
            while True:
                await asyncio.sleep(2.0)
                print(json.dumps(dict(counters)), flush=True)

        reporter = asyncio.create_task(report())
        await asyncio.gather(*tasks, return_exceptions=True)
        reporter.cancel()
        print(json.dumps({**counters, "finished": True}), flush=True)

    asyncio.run(main())


# -- orchestration ---------------------------------------------------------------------------------
class Server:
    """A ``serve`` process and its JSON lines."""

    def __init__(self, certs: Path, count: int, rounds: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.fleet", "serve", "--certs", str(certs), "--devices", str(count),
             "--rounds", str(rounds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
        )
        self.lines: list[dict[str, Any]] = []
        self._stats: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self.address = json.loads(self.proc.stdout.readline())["address"]  # type: ignore[union-attr]
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            item = json.loads(line)
            with self._cond:
                (self._stats if "rss_bytes" in item and "round" not in item else self.lines).append(item)
                self._cond.notify_all()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            seen = len(self._stats)
            self.proc.stdin.write("stats\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            self._cond.wait_for(lambda: len(self._stats) > seen, timeout=60)
            return self._stats[-1]

    def wait(self, predicate: Any, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(predicate(x) for x in self.lines), timeout=timeout_s)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _start_devices(address: str, certs: Path, count: int, idle: bool) -> list[subprocess.Popen]:
    procs = []
    for first in range(0, count, DEVICES_PER_PROCESS):
        command = [sys.executable, "-m", "bench.fleet", "devices", "--address", address, "--certs", str(certs),
                   "--first", str(10_000 + first), "--count", str(min(DEVICES_PER_PROCESS, count - first))]
        procs.append(subprocess.Popen([*command, *(["--idle"] if idle else [])], stdout=subprocess.DEVNULL,
                                      cwd=Path(__file__).resolve().parents[1]))
    return procs


def _issue(certs: Path, count: int) -> None:
    from fedge.server.certs import CertDir, create_federation, issue_devices

    paths = CertDir(certs)
    if not paths.ca.exists():
        create_federation(certs)
    missing = [str(10_000 + i) for i in range(count) if not paths.device(str(10_000 + i)).exists()]
    if missing:
        issue_devices(certs, missing)


def measure(certs: Path, count: int, rounds: int, idle: bool, timeout_s: float) -> dict[str, Any]:
    _issue(certs, count)
    server = Server(certs, count, 0 if idle else rounds)
    procs = _start_devices(server.address, certs, count, idle)
    peak_threads, peak_rss, start = 0, 0, time.monotonic()
    result: dict[str, Any] = {"devices": count, "mode": "idle" if idle else "rounds"}
    try:
        while time.monotonic() - start < timeout_s:
            stats = server.stats()
            peak_threads, peak_rss = max(peak_threads, stats["threads"]), max(peak_rss, stats["rss_bytes"])
            if idle and stats["live"] >= count and stats["open_polls"] >= count:
                time.sleep(5)
                stats = server.stats()
                result.update(connected=stats["live"], open_polls=stats["open_polls"], rss_bytes=stats["rss_bytes"],
                              threads=stats["threads"])
                peak_threads, peak_rss = max(peak_threads, stats["threads"]), max(peak_rss, stats["rss_bytes"])
                break
            if not idle and server.wait(lambda x: x.get("done"), 2.0):
                break
            time.sleep(1.0)
        result["seconds"] = round(time.monotonic() - start, 1)
        if not idle:
            done = [x for x in server.lines if "round" in x and x["round"] > 0]
            walls = [x["wall_s"] for x in done]
            result.update(
                rounds_completed=len(done),
                replies=[x["replies"] for x in done],
                failures=[x["failures"] for x in done],
                round_latency_s={"min": min(walls), "median": statistics.median(walls), "max": max(walls)} if walls else None,
                rounds_per_minute=60 * len(walls) / sum(walls) if walls else 0.0,
            )
        final = server.stats()
        result.update(peak_rss_bytes=max(peak_rss, final["peak_rss_bytes"]), peak_threads=peak_threads,
                      refusals=final["refusals"], live_at_end=final["live"])
    finally:
        server.stop()
        for proc in procs:
            proc.kill()
            proc.wait()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.fleet", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    s = sub.add_parser("serve")
    s.add_argument("--certs", required=True)
    s.add_argument("--address", default="127.0.0.1:0")
    s.add_argument("--devices", type=int, default=1)
    s.add_argument("--rounds", type=int, default=0)
    s.add_argument("--join-timeout", type=float, default=900.0)
    d = sub.add_parser("devices")
    d.add_argument("--address", required=True)
    d.add_argument("--certs", required=True)
    d.add_argument("--first", type=int, required=True)
    d.add_argument("--count", type=int, required=True)
    d.add_argument("--idle", action="store_true")
    r = sub.add_parser("run")
    r.add_argument("--sizes", default="100,1000,10000")
    r.add_argument("--idle-sizes", default="10000")
    r.add_argument("--rounds", type=int, default=10)
    r.add_argument("--timeout", type=float, default=1200.0)
    r.add_argument("--certs", default=str(Path(tempfile.gettempdir()) / "fedge-fleet-certs"))
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args)
    elif args.command == "devices":
        devices(args)
    else:
        run(args if args.command == "run" else r.parse_args([]))


def run(args: argparse.Namespace) -> None:
    certs = Path(args.certs)
    load_before = os.getloadavg()
    runs = []
    for size in [int(x) for x in args.idle_sizes.split(",") if x]:
        runs.append(measure(certs, size, 0, True, args.timeout))
        print(json.dumps(runs[-1]), flush=True)
    for size in [int(x) for x in args.sizes.split(",") if x]:
        runs.append(measure(certs, size, args.rounds, False, args.timeout))
        print(json.dumps(runs[-1]), flush=True)
    completed = [r["devices"] for r in runs if r["mode"] == "rounds" and r.get("rounds_completed", 0) >= args.rounds]
    report = {
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                    "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "settings": "ServerConfig defaults (mTLS, signed tasks); digits model (38,282 fp32 parameters); "
                    "CompressedStrategy(FedAvg), every device sampled every round",
        "runs": runs,
        "largest_n_completing_rounds": max(completed) if completed else 0,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fleet.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "fleet.md").write_text(_markdown(report))
    print(_markdown(report))


def _markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Fleet: one fedge server, many simulated devices",
        "",
        f"Machine: {m['cpus']} CPUs, {m['memory_gb']} GB; load average before {m['loadavg_before'][0]:.1f}, "
        f"after {m['loadavg_after'][0]:.1f} (shared with other work). {report['settings']}.",
        "",
        "| devices | mode | rounds done | rounds/min | round latency s (min / median / max) | server peak RSS MB | server threads |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lat = r.get("round_latency_s")
        latency = f"{lat['min']:.2f} / {lat['median']:.2f} / {lat['max']:.2f}" if lat else "-"
        rpm = f"{r['rounds_per_minute']:.1f}" if "rounds_per_minute" in r else "-"
        done = r.get("rounds_completed", f"idle, {r.get('connected', 0)} connected")
        lines.append(f"| {r['devices']} | {r['mode']} | {done} | {rpm} | {latency} | "
                     f"{r['peak_rss_bytes'] / 2**20:.0f} | {r['peak_threads']} |")
    lines += ["", f"Largest N that completed every round: {report['largest_n_completing_rounds']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
