from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ShareKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SHARE_KIND_UNSPECIFIED: _ClassVar[ShareKind]
    SHARE_KIND_SEED: _ClassVar[ShareKind]
    SHARE_KIND_KEY: _ClassVar[ShareKind]
SHARE_KIND_UNSPECIFIED: ShareKind
SHARE_KIND_SEED: ShareKind
SHARE_KIND_KEY: ShareKind

class SecAggSetup(_message.Message):
    __slots__ = ("server_round", "participants", "neighbours", "threshold", "graph_seed", "modulus_bits", "value_bits", "clip", "vector_length", "layout_digest", "kept", "coordinate_seed", "max_examples", "error_feedback")
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    GRAPH_SEED_FIELD_NUMBER: _ClassVar[int]
    MODULUS_BITS_FIELD_NUMBER: _ClassVar[int]
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
    modulus_bits: int
    value_bits: int
    clip: float
    vector_length: int
    layout_digest: bytes
    kept: int
    coordinate_seed: bytes
    max_examples: float
    error_feedback: bool
    def __init__(self, server_round: _Optional[int] = ..., participants: _Optional[_Iterable[int]] = ..., neighbours: _Optional[int] = ..., threshold: _Optional[int] = ..., graph_seed: _Optional[bytes] = ..., modulus_bits: _Optional[int] = ..., value_bits: _Optional[int] = ..., clip: _Optional[float] = ..., vector_length: _Optional[int] = ..., layout_digest: _Optional[bytes] = ..., kept: _Optional[int] = ..., coordinate_seed: _Optional[bytes] = ..., max_examples: _Optional[float] = ..., error_feedback: _Optional[bool] = ...) -> None: ...

class PeerKeys(_message.Message):
    __slots__ = ("node_id", "cipher_public_key", "mask_public_key")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CIPHER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    cipher_public_key: bytes
    mask_public_key: bytes
    def __init__(self, node_id: _Optional[int] = ..., cipher_public_key: _Optional[bytes] = ..., mask_public_key: _Optional[bytes] = ...) -> None: ...

class KeyRoster(_message.Message):
    __slots__ = ("server_round", "peers")
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    server_round: int
    peers: _containers.RepeatedCompositeFieldContainer[PeerKeys]
    def __init__(self, server_round: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[PeerKeys, _Mapping]]] = ...) -> None: ...

class EncryptedShare(_message.Message):
    __slots__ = ("sender", "receiver", "nonce", "ciphertext")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    sender: int
    receiver: int
    nonce: bytes
    ciphertext: bytes
    def __init__(self, sender: _Optional[int] = ..., receiver: _Optional[int] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class ShareBundle(_message.Message):
    __slots__ = ("server_round", "shares")
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    server_round: int
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, server_round: _Optional[int] = ..., shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("server_round", "survivors", "dropped")
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    server_round: int
    survivors: _containers.RepeatedScalarFieldContainer[int]
    dropped: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, server_round: _Optional[int] = ..., survivors: _Optional[_Iterable[int]] = ..., dropped: _Optional[_Iterable[int]] = ...) -> None: ...

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
    __slots__ = ("server_round", "node_id", "cipher_public_key", "mask_public_key")
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CIPHER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    server_round: int
    node_id: int
    cipher_public_key: bytes
    mask_public_key: bytes
    def __init__(self, server_round: _Optional[int] = ..., node_id: _Optional[int] = ..., cipher_public_key: _Optional[bytes] = ..., mask_public_key: _Optional[bytes] = ...) -> None: ...

class ShareKeys(_message.Message):
    __slots__ = ("server_round", "node_id", "seed_commitment", "shares")
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    server_round: int
    node_id: int
    seed_commitment: bytes
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, server_round: _Optional[int] = ..., node_id: _Optional[int] = ..., seed_commitment: _Optional[bytes] = ..., shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class MaskedInput(_message.Message):
    __slots__ = ("server_round", "node_id", "length", "modulus_bits", "data")
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    MODULUS_BITS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    server_round: int
    node_id: int
    length: int
    modulus_bits: int
    data: bytes
    def __init__(self, server_round: _Optional[int] = ..., node_id: _Optional[int] = ..., length: _Optional[int] = ..., modulus_bits: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class RevealedShare(_message.Message):
    __slots__ = ("owner", "kind", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: int
    kind: ShareKind
    share: bytes
    def __init__(self, owner: _Optional[int] = ..., kind: _Optional[_Union[ShareKind, str]] = ..., share: _Optional[bytes] = ...) -> None: ...

class UnmaskShares(_message.Message):
    __slots__ = ("server_round", "node_id", "shares")
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    server_round: int
    node_id: int
    shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    def __init__(self, server_round: _Optional[int] = ..., node_id: _Optional[int] = ..., shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ...) -> None: ...

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

class SharePlaintext(_message.Message):
    __slots__ = ("server_round", "sender", "receiver", "seed_share", "key_share")
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    SEED_SHARE_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARE_FIELD_NUMBER: _ClassVar[int]
    server_round: int
    sender: int
    receiver: int
    seed_share: bytes
    key_share: bytes
    def __init__(self, server_round: _Optional[int] = ..., sender: _Optional[int] = ..., receiver: _Optional[int] = ..., seed_share: _Optional[bytes] = ..., key_share: _Optional[bytes] = ...) -> None: ...
