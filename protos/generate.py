"""Regenerate the Python code for fedge's .proto files (``make protos``).

The .proto files live in ``protos/v1`` but are known to protoc as
``fedge/protos/v1/*.proto`` (a virtual import path), so the generated modules import
each other as ``fedge.protos.v1.*_pb2``, which is where the package installs them.

Usage: ``python -m fedge.protos.generate [--check]``. With ``--check`` nothing is
written; the exit status is 1 when the committed code differs from what the .proto
files generate (the drift test uses the same function).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent / "v1"
VIRTUAL_ROOT = "fedge/protos"


def proto_files() -> list[Path]:
    """The .proto sources, sorted by name."""
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_dir: Path) -> dict[str, bytes]:
    """Run protoc (from grpcio-tools) into ``out_dir``; return {file name: bytes}."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit(
            "grpcio-tools is needed to regenerate protos: pip install -e '.[dev]'"
        ) from exc
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{VIRTUAL_ROOT}={PROTO_DIR.parent}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[f"{VIRTUAL_ROOT}/{p.parent.name}/{p.name}" for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    produced = out_dir / VIRTUAL_ROOT / PROTO_DIR.name
    return {p.name: p.read_bytes() for p in sorted(produced.iterdir()) if p.is_file()}


def committed() -> dict[str, bytes]:
    """The generated files currently in ``protos/v1``."""
    return {
        p.name: p.read_bytes()
        for p in sorted(PROTO_DIR.iterdir())
        if p.is_file() and (p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")))
    }


def drift() -> list[str]:
    """Names of generated files that differ from (or are missing in) ``protos/v1``."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    current = committed()
    return sorted(n for n in fresh.keys() | current.keys() if fresh.get(n) != current.get(n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report drift")
    args = parser.parse_args(argv)
    if args.check:
        stale = drift()
        if stale:
            print("generated protobuf code is stale: " + ", ".join(stale))
            print("run `make protos` and commit the result")
            return 1
        print("generated protobuf code matches the .proto files")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    for name, data in fresh.items():
        (PROTO_DIR / name).write_bytes(data)
        print(f"wrote protos/v1/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
