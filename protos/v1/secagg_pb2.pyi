from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SecAggSetup(_message.Message):
    __slots__ = ("server_round", "participants", "neighbours", "threshold", "graph_seed", "modulus", "value_bits", "clip", "vector_length", "layout_digest", "kept", "coordinate_seed", "max_examples", "error_feedback")
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    GRAPH_SEED_FIELD_NUMBER: _ClassVar[int]
    MODULUS_FIELD_NUMBER: _ClassVar[int]
    VALUE_BITS_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    VECTOR_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    COORDINATE_SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    server_round: int
    participants: _containers.RepeatedScalarFieldContainer[int]
    neighbours: int
    threshold: int
    graph_seed: bytes
    modulus: int
    value_bits: int
    clip: float
    vector_length: int
    layout_digest: bytes
    kept: int
    coordinate_seed: bytes
    max_examples: float
    error_feedback: bool
    def __init__(self, server_round: _Optional[int] = ..., participants: _Optional[_Iterable[int]] = ..., neighbours: _Optional[int] = ..., threshold: _Optional[int] = ..., graph_seed: _Optional[bytes] = ..., modulus: _Optional[int] = ..., value_bits: _Optional[int] = ..., clip: _Optional[float] = ..., vector_length: _Optional[int] = ..., layout_digest: _Optional[bytes] = ..., kept: _Optional[int] = ..., coordinate_seed: _Optional[bytes] = ..., max_examples: _Optional[float] = ..., error_feedback: _Optional[bool] = ...) -> None: ...

class KeyRoster(_message.Message):
    __slots__ = ("server_round", "advertised", "public_keys")
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    ADVERTISED_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEYS_FIELD_NUMBER: _ClassVar[int]
    server_round: int
    advertised: bytes
    public_keys: bytes
    def __init__(self, server_round: _Optional[int] = ..., advertised: _Optional[bytes] = ..., public_keys: _Optional[bytes] = ...) -> None: ...

class ShareBundle(_message.Message):
    __slots__ = ("server_round", "senders", "sealed")
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    SENDERS_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    server_round: int
    senders: bytes
    sealed: bytes
    def __init__(self, server_round: _Optional[int] = ..., senders: _Optional[bytes] = ..., sealed: _Optional[bytes] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("server_round", "survived")
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    SURVIVED_FIELD_NUMBER: _ClassVar[int]
    server_round: int
    survived: bytes
    def __init__(self, server_round: _Optional[int] = ..., survived: _Optional[bytes] = ...) -> None: ...

class SecAggRequest(_message.Message):
    __slots__ = ("setup", "roster", "bundle", "unmask")
    SETUP_FIELD_NUMBER: _ClassVar[int]
    ROSTER_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    UNMASK_FIELD_NUMBER: _ClassVar[int]
    setup: SecAggSetup
    roster: KeyRoster
    bundle: ShareBundle
    unmask: UnmaskRequest
    def __init__(self, setup: _Optional[_Union[SecAggSetup, _Mapping]] = ..., roster: _Optional[_Union[KeyRoster, _Mapping]] = ..., bundle: _Optional[_Union[ShareBundle, _Mapping]] = ..., unmask: _Optional[_Union[UnmaskRequest, _Mapping]] = ...) -> None: ...

class AdvertiseKeys(_message.Message):
    __slots__ = ("server_round", "cipher_public_key", "mask_public_key")
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    CIPHER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    server_round: int
    cipher_public_key: bytes
    mask_public_key: bytes
    def __init__(self, server_round: _Optional[int] = ..., cipher_public_key: _Optional[bytes] = ..., mask_public_key: _Optional[bytes] = ...) -> None: ...

class ShareKeys(_message.Message):
    __slots__ = ("server_round", "seed_commitment", "sealed")
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    SEED_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    server_round: int
    seed_commitment: bytes
    sealed: bytes
    def __init__(self, server_round: _Optional[int] = ..., seed_commitment: _Optional[bytes] = ..., sealed: _Optional[bytes] = ...) -> None: ...

class MaskedInput(_message.Message):
    __slots__ = ("server_round", "data")
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    server_round: int
    data: bytes
    def __init__(self, server_round: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class UnmaskShares(_message.Message):
    __slots__ = ("server_round", "held", "shares")
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    server_round: int
    held: bytes
    shares: bytes
    def __init__(self, server_round: _Optional[int] = ..., held: _Optional[bytes] = ..., shares: _Optional[bytes] = ...) -> None: ...

class SecAggReply(_message.Message):
    __slots__ = ("keys", "shares", "masked", "revealed")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    MASKED_FIELD_NUMBER: _ClassVar[int]
    REVEALED_FIELD_NUMBER: _ClassVar[int]
    keys: AdvertiseKeys
    shares: ShareKeys
    masked: MaskedInput
    revealed: UnmaskShares
    def __init__(self, keys: _Optional[_Union[AdvertiseKeys, _Mapping]] = ..., shares: _Optional[_Union[ShareKeys, _Mapping]] = ..., masked: _Optional[_Union[MaskedInput, _Mapping]] = ..., revealed: _Optional[_Union[UnmaskShares, _Mapping]] = ...) -> None: ...
