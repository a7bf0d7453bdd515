"""Secure aggregation on the server: the round's state machine and the Flower wrapper."""

from fedge.strategies.secagg.state import DroppedInput, SecAggServerRound, ServerStage

__all__ = ["DroppedInput", "SecAggServerRound", "ServerStage"]
