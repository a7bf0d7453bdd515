"""The Flower internals fedge relies on. When a Flower upgrade breaks one, this fails loudly."""

import inspect

import flwr
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp import Grid

from fedge.server.identity import ensure_task_identity


def test_flower_version_is_the_tested_minor():
    major, minor = (int(x) for x in flwr.__version__.split(".")[:2])
    assert (major, minor) in {(1, 41), (1, 42)}, f"fedge is tested with flwr 1.41 and 1.42, found {flwr.__version__}"


def test_task_identity_is_where_fedge_sets_it():
    from flwr.supercore.task_identity import TaskIdentity

    ensure_task_identity(7)
    assert TaskIdentity.run_id == 7
    from flwr.app import Message

    msg = Message(RecordDict({"c": ConfigRecord()}), 1000, "train")
    assert msg.metadata.run_id == 7


def test_grid_abstract_methods_are_those_fedge_implements():
    abstract = {name for name, member in inspect.getmembers(Grid) if getattr(member, "__isabstractmethod__", False)}
    assert abstract == {"set_run", "run", "create_message", "get_node_ids", "push_messages", "pull_messages", "send_and_receive"}


def test_strategy_start_signature():
    from flwr.serverapp.strategy import Strategy

    params = inspect.signature(Strategy.start).parameters
    assert {"grid", "initial_arrays", "num_rounds", "timeout", "train_config", "evaluate_fn"} <= set(params)


def test_arrayrecord_from_torch_state_dict():
    import torch

    record = ArrayRecord(torch.nn.Linear(2, 3).state_dict())
    assert list(record.keys()) == ["weight", "bias"] and record["weight"].numpy().shape == (3, 2)


def test_a_grid_can_give_an_instruction_its_id_through_public_metadata():
    """FedgeGrid ids its instructions by rebuilding them from a full ``flwr.app.Metadata``
    (``server/message_translation.with_message_id``), not by writing a private field."""
    from flwr.app import Message

    from fedge.server.message_translation import with_message_id

    ensure_task_identity(3)
    content = RecordDict({"c": ConfigRecord({"x": 1})})
    original = Message(content, 1001, "train", group_id="4")
    sent = with_message_id(original, "abc")
    assert sent.metadata.message_id == "abc" and sent.content is original.content
    m, o = sent.metadata, original.metadata
    assert (m.run_id, m.dst_node_id, m.group_id, m.message_type, m.ttl, m.created_at) == (
        o.run_id, o.dst_node_id, o.group_id, o.message_type, o.ttl, o.created_at
    )
    assert Message(RecordDict(), reply_to=sent).metadata.reply_to_message_id == "abc"
