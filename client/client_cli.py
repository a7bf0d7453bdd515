"""``fedge-client``: run a device against a fedge server.

    fedge-client --server HOST:PORT --task digits --data device.npz \\
        --ca ca.pem --cert device.pem --key device.key

The device's identity is its certificate's common name. ``--insecure`` (with
``--device-id``) talks plaintext to a development server on loopback; towards any
other host it is refused (exit status 2). SIGTERM and
SIGINT end the loop cleanly: a long poll is cut short, a task in progress is
finished and pushed, the device says Leave, the exit status is 0.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import signal
import sys

from fedge.client.connection import DeviceCredentials, is_loopback
from fedge.client.data import load_local_data
from fedge.client.train_config import TrainConfig
from fedge.client.runtime import DeviceRuntime, RuntimeSettings
from fedge.client.trainer import RUNTIMES
from fedge.tasks.registry import resolve_task, task_names


def _task_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--task-option must be KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-shape must be comma-separated integers, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedge-client", description="Run a fedge device against a fedge server.")
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="the fedge-server to join")
    p.add_argument("--task", required=True, help=f"task name ({', '.join(task_names())}) or package.module:Class")
    p.add_argument("--task-option", action="append", type=_task_option, default=[], metavar="KEY=VALUE",
                   help="keyword argument for the task's constructor (repeatable), e.g. width=16")
    p.add_argument("--data", required=True, help="local examples: .npz with arrays x (N, *input_shape) and y (N,) labels in 0..num_classes-1; "
                        "or .csv with a header, a label column and one column per feature")
    p.add_argument("--input-shape", type=_shape, default=None, metavar="D1,D2,...",
                   help="shape of one example (default: the task's input_shape, if it has one)")
    p.add_argument("--ca", help="the federation's CA certificate (PEM)")
    p.add_argument("--cert", help="this device's certificate (PEM)")
    p.add_argument("--key", help="this device's private key (PEM)")
    p.add_argument("--server-name", help="name in the server certificate, if not the HOST of --server")
    p.add_argument("--insecure", action="store_true", help="plaintext, no certificates: loopback development only")
    p.add_argument("--device-id", help="device name (default: the common name of --cert; required with --insecure)")
    p.add_argument("--seed", type=int, default=0, help="base seed of local shuffling (default 0)")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch",
                   help="training runtime: torch, or numpy (no torch needed: pip install 'fedge[device]')")
    p.add_argument("--threads", type=int, default=1, help="torch threads for local training (default 1)")
    p.add_argument("--pull-wait", type=float, default=30.0, help="longest long poll, seconds")
    p.add_argument("--max-retries", type=int, default=0, help="give up after this many failed reconnects (0: never)")
    p.add_argument("--backoff-max", type=float, default=30.0, help="longest wait between reconnects, seconds")
    p.add_argument("--memory-mb", type=float, default=0.0,
                   help="this device's training-memory budget, MB; the server's client.memory_mb can only "
                        "tighten it (default 0: no limit)")
    p.add_argument("--slowdown", type=float, default=1.0, metavar="FACTOR",
                   help="emulate slower hardware: every task costs FACTOR times the CPU time it took here (the device "
                        "waits (FACTOR-1) x the task's CPU seconds before pushing; same work, same update). Default 1")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    return p


def _device_id(args: argparse.Namespace) -> str:
    if args.device_id:
        return args.device_id
    if args.insecure:
        raise ValueError("--insecure needs --device-id (there is no certificate to take it from)")
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(open(args.cert, "rb").read())
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise ValueError(f"{args.cert} has no common name; pass --device-id")
    return str(names[0].value)


def _profile() -> dict[str, float]:
    profile = {"cpu_count": float(os.cpu_count() or 1)}
    try:
        profile["memory_mb"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        pass
    return profile


def build_runtime(args: argparse.Namespace) -> DeviceRuntime:
    """The runtime the arguments describe; ``ValueError`` names a bad argument."""
    if args.insecure:
        if args.ca or args.cert or args.key:
            raise ValueError("--insecure cannot be combined with --ca/--cert/--key")
        if not is_loopback(args.server):
            raise ValueError(
                f"--insecure sends models and updates in plaintext, to loopback servers only "
                f"(127.0.0.1, ::1, localhost), not {args.server!r}: use --ca/--cert/--key"
            )
        credentials = None
        logging.getLogger("fedge").warning("--insecure: plaintext channel, for loopback development only")
    else:
        if not (args.ca and args.cert and args.key):
            raise ValueError("--ca, --cert and --key are required (or --insecure for loopback development)")
        credentials = DeviceCredentials.from_files(args.ca, args.cert, args.key)
    task_cls = resolve_task(args.task)
    try:
        task = task_cls(**dict(args.task_option))
    except TypeError as exc:
        raise ValueError(f"task {args.task!r}: bad --task-option: {exc}") from None
    if args.runtime == "numpy":  # refuse a model the runtime cannot run before touching any data
        from fedge.client.numpy_runtime.trainer import numpy_spec

        numpy_spec(task)
    shape = args.input_shape or getattr(task, "input_shape", None)
    data = load_local_data(args.data, shape, int(getattr(task, "num_classes", 0) or 0))
    settings = RuntimeSettings(
        server=args.server,
        device_id=_device_id(args),
        credentials=credentials,
        server_name=args.server_name,
        seed=args.seed,
        pull_wait_s=args.pull_wait,
        max_retries=args.max_retries,
        backoff_max_s=args.backoff_max,
        profile=_profile(),
        slowdown=args.slowdown,
    )
    if not args.slowdown >= 1.0:
        raise ValueError(f"--slowdown must be >= 1 (1 = this machine's speed), got {args.slowdown}")
    if args.memory_mb < 0:
        raise ValueError(f"--memory-mb must be >= 0 (0 = no limit), got {args.memory_mb}")
    defaults = TrainConfig(memory_mb=args.memory_mb) if args.memory_mb > 0 else None
    return DeviceRuntime(task, data, settings, defaults, runtime=args.runtime)


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``fedge-client``)."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.runtime == "torch":
        import torch

        torch.set_num_threads(max(1, args.threads))
    try:
        runtime = build_runtime(args)
    except (ValueError, OSError) as exc:
        print(f"fedge-client: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("fedge").info("signal %d: stopping", signum)
        runtime.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return runtime.run()


if __name__ == "__main__":
    sys.exit(main())
