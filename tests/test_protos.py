"""The committed generated code matches the .proto files; messages round-trip."""

from fedge.protos import config_values
from fedge.protos import generate
from fedge.protos.v1 import task_pb2


def test_generated_code_matches_protos():
    assert generate.drift() == [], "run `make protos` and commit the generated files"


def test_drift_is_detected(tmp_path, monkeypatch):
    # A changed .proto must make the check fail: point the generator at a modified copy.
    copy = tmp_path / "v1"
    copy.mkdir()
    for path in generate.PROTO_DIR.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    proto = copy / "task.proto"
    proto.write_text(proto.read_text().replace("uint32 protocol_version = 7;", "uint32 protocol_version = 7;\n  string extra = 8;"))
    monkeypatch.setattr(generate, "PROTO_DIR", copy)
    assert "task_pb2.py" in generate.drift()


def test_config_values_round_trip_through_task_bytes():
    config = {"lr": 0.1, "epochs": 3, "flag": True, "codec": "fp16", "blob": b"\x00\x01"}
    task = task_pb2.Task(task_id="x", kind="train")
    config_values.to_wire(config, task.config)
    back = config_values.from_wire(task_pb2.Task.FromString(task.SerializeToString()).config)
    assert back == config
    assert type(back["epochs"]) is int and type(back["flag"]) is bool


def test_unsupported_config_value_names_the_key():
    task = task_pb2.Task()
    try:
        config_values.to_wire({"layers": [1, 2]}, task.config)
    except TypeError as exc:
        assert "layers" in str(exc)
    else:
        raise AssertionError("a list value must be refused")
