"""``fedge-certs OUT``: write a federation's CA, server TLS certificate, model-signing key
and device certificates (the library is :mod:`fedge.server.certs`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedge.server.certs import DEFAULT_HOSTS, CertDir, check_device_id, create_federation, issue_devices


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``fedge-certs``)."""
    parser = argparse.ArgumentParser(
        prog="fedge-certs",
        description="Write a federation's CA, server TLS certificate, model-signing key and device certificates.",
    )
    parser.add_argument("out", type=Path, help="directory to write into (created if missing)")
    parser.add_argument(
        "--server-host", action="append", default=[], metavar="HOST",
        help="DNS name or IP address devices use to reach the server (repeatable; "
        "default: localhost and 127.0.0.1)",
    )
    parser.add_argument("--device", action="append", default=[], metavar="ID", help="issue a device certificate (repeatable)")
    parser.add_argument("--devices", type=int, default=0, metavar="N", help="issue device-0 ... device-(N-1)")
    parser.add_argument("--days", type=int, default=365, help="validity of server and device certificates")
    args = parser.parse_args(argv)
    devices = list(args.device) + [f"device-{i}" for i in range(args.devices)]
    try:
        for device_id in devices:
            check_device_id(device_id)
        paths = CertDir(args.out)
        if not paths.ca.exists():
            create_federation(args.out, tuple(args.server_host) or DEFAULT_HOSTS, args.days)
            print(f"wrote CA, server and signing certificates to {args.out}")
        elif args.server_host:
            raise ValueError(f"{paths.ca} exists: --server-host applies only when the CA is created")
        issue_devices(args.out, devices, args.days)
    except (ValueError, FileExistsError, OSError) as exc:
        print(f"fedge-certs: {exc}", file=sys.stderr)
        return 2
    for device_id in devices:
        print(f"device {device_id}: {paths.device(device_id)} {paths.device_key(device_id)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
