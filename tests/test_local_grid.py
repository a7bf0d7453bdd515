"""LocalGrid: clients pinned to worker processes keep their state; dead workers fail softly."""

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from fedge.client import EdgeClient, TrainConfig
from fedge.server.message_translation import message_to_task, with_message_id
from fedge.simulations.clients import ClientRecipe, node_id_of
from fedge.simulations.local_grid import LocalGrid
from fedge.strategies import CompressedStrategy
from fedge.tasks.digits import DigitsTask


class CountingClient(EdgeClient):
    """An EdgeClient that reports how many tasks this instance has handled."""

    calls = 0

    def handle(self, task, broadcast=None):
        self.calls += 1
        update = super().handle(task, broadcast)
        update.metrics["calls"] = float(self.calls)
        return update


class CountingRecipe(ClientRecipe):
    def client(self, node_id):
        if node_id not in self._clients:
            if self._data is None:
                self._data = self.task.load()
            data = self._data.train.subset(self.partitions[node_id])
            self._clients[node_id] = CountingClient(self.task, data, node_id, self.defaults, self.seed)
        return self._clients[node_id]


def recipe(cls=ClientRecipe, clients=4):
    task = DigitsTask()
    parts = np.array_split(np.arange(200), clients)
    return cls(task, {node_id_of(i): p for i, p in enumerate(parts)}, TrainConfig(local_steps=1))


def train_messages(grid, strategy, server_round):
    initial = ArrayRecord(DigitsTask().build_model().state_dict())
    return list(strategy.configure_train(server_round, initial, ConfigRecord(), grid))


def test_client_state_persists_across_rounds_in_its_worker():
    strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=4))
    with LocalGrid(recipe(CountingRecipe), num_workers=2) as grid:
        for server_round in (1, 2, 3):
            replies = grid.send_and_receive(train_messages(grid, strategy, server_round))
            calls = [r.content["metrics"]["calls"] for r in replies]
            assert calls == [float(server_round)] * 4


def test_replies_come_back_in_request_order():
    strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=4))
    with LocalGrid(recipe(), num_workers=2) as grid:
        messages = list(train_messages(grid, strategy, 1))
        replies = grid.send_and_receive(messages)
        assert [r.metadata.src_node_id for r in replies] == [m.metadata.dst_node_id for m in messages]
        ids = grid.push_messages(messages)  # Flower's Grid contract: replies answer the ids push returns
        assert len(set(ids)) == len(messages) and all(ids)
        assert [r.metadata.reply_to_message_id for r in grid.pull_messages(ids)] == ids


def test_dead_worker_fails_its_clients_not_the_round():
    strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=4))
    with LocalGrid(recipe(), num_workers=2) as grid:
        proc, _ = grid._workers[0]
        proc.kill()
        proc.join()
        replies = grid.send_and_receive(train_messages(grid, strategy, 1))
        failed = [r for r in replies if r.has_error()]
        assert len(replies) == 4 and len(failed) == 2
        assert all("did not answer" in r.error.reason for r in failed)
        round_traffic = grid.traffic.round(1)
        assert (round_traffic.replies, round_traffic.failures) == (2, 2)


def test_task_bytes_are_what_the_grid_counts():
    strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=4))
    with LocalGrid(recipe()) as grid:
        messages = list(train_messages(grid, strategy, 1))
        ids = grid.push_messages(messages)  # the message ids the tasks carry
        expected = sum(len(message_to_task(with_message_id(m, i)).SerializeToString()) for m, i in zip(messages, ids))
        assert grid.traffic.round(1).downlink_bytes == expected


def test_in_process_rounds_find_the_thread_pools_once_and_train_as_workers(monkeypatch):
    import threadpoolctl

    made = []
    original = threadpoolctl.ThreadpoolController
    monkeypatch.setattr(threadpoolctl, "ThreadpoolController", lambda: made.append(1) or original())
    finals = []
    initial = ArrayRecord(DigitsTask().build_model().state_dict())
    for workers in (0, 2):
        strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=4))
        with LocalGrid(recipe(), num_workers=workers) as grid:
            for server_round in (1, 2, 3):
                messages = strategy.configure_train(server_round, initial, ConfigRecord(), grid)
                replies = grid.send_and_receive(messages)
        finals.append({r.metadata.src_node_id: r.content["fedge.update"]["payload"] for r in replies})
    assert len(made) == 1  # three in-process deliveries: the pools were found once (workers cap their own)
    assert finals[0] == finals[1]  # the same update bytes, in-process or in worker processes


class TruncatingClient(EdgeClient):
    """A device whose Update carries a tensor four bytes short (hostile or broken)."""

    def handle(self, task, broadcast=None):
        update = super().handle(task, broadcast)
        if update.HasField("update"):
            tensor = update.update.tensors[0]
            tensor.data = tensor.data[:-4]
        return update


class TruncatingRecipe(ClientRecipe):
    hostile = node_id_of(0)

    def client(self, node_id):
        if node_id not in self._clients:
            if self._data is None:
                self._data = self.task.load()
            data = self._data.train.subset(self.partitions[node_id])
            cls = TruncatingClient if node_id == self.hostile else EdgeClient
            self._clients[node_id] = cls(self.task, data, node_id, self.defaults, self.seed)
        return self._clients[node_id]


def _capture_answers(grid):
    """Wrap ``grid._deliver`` to keep every answer it hands the Grid."""
    seen = []
    deliver = grid._deliver

    def capturing(tasks):
        answers = deliver(tasks)
        seen.extend(answers)
        return answers

    grid._deliver = capturing
    return seen


def test_in_process_answers_are_counted_at_their_serialised_size():
    from fedge.protos.v1 import task_pb2
    from fedge.server.grid import answer_size

    uplink = {}
    for workers in (0, 2):
        strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=4))
        with LocalGrid(recipe(), num_workers=workers) as grid:
            seen = _capture_answers(grid)
            grid.send_and_receive(train_messages(grid, strategy, 1))
            kinds = {type(a) for a in seen}
            assert kinds == ({task_pb2.Update} if workers == 0 else {bytes})  # in-process: no serialise/parse round trip
            serialised = [a.SerializeToString() if isinstance(a, task_pb2.Update) else a for a in seen]
            assert [answer_size(a) for a in seen] == [len(b) for b in serialised]
            assert grid.traffic.round(1).uplink_bytes == sum(len(b) for b in serialised)
            uplink[workers] = sorted(len(b) for b in serialised)
    assert uplink[0] == uplink[2]  # the same Updates, the same bytes, in-process or across processes
    assert answer_size(None) == 0


def test_in_process_updates_still_meet_the_reply_validator():
    strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=4))
    from fedge.protos.v1 import task_pb2

    with LocalGrid(recipe(TruncatingRecipe), num_workers=0) as grid:
        seen = _capture_answers(grid)
        replies = grid.send_and_receive(train_messages(grid, strategy, 1))
        assert all(isinstance(a, task_pb2.Update) for a in seen)  # the fast path: Update objects, never bytes
        arrays, _ = strategy.aggregate_train(1, replies)
    dropped = strategy.log.dropped_in(1)
    assert [d.node_id for d in dropped] == [TruncatingRecipe.hostile]
    assert "MalformedPayloadError" in dropped[0].reason and "bytes" in dropped[0].reason
    assert arrays is not None  # the three honest replies were aggregated
