import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import wrappers_pb2 as _wrappers_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MetaRouter(_message.Message):
    __slots__ = ("hosts", "gateways", "routes", "local_rate_limit", "global_rate_limit", "export_to")
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    EXPORT_TO_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedScalarFieldContainer[str]
    gateways: _containers.RepeatedScalarFieldContainer[str]
    routes: _containers.RepeatedCompositeFieldContainer[MetaRoute]
    local_rate_limit: LocalRateLimit
    global_rate_limit: GlobalRateLimit
    export_to: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, hosts: _Optional[_Iterable[str]] = ..., gateways: _Optional[_Iterable[str]] = ..., routes: _Optional[_Iterable[_Union[MetaRoute, _Mapping]]] = ..., local_rate_limit: _Optional[_Union[LocalRateLimit, _Mapping]] = ..., global_rate_limit: _Optional[_Union[GlobalRateLimit, _Mapping]] = ..., export_to: _Optional[_Iterable[str]] = ...) -> None: ...

class MetaRoute(_message.Message):
    __slots__ = ("name", "match", "route", "mirror", "mirror_percentage", "request_mutation", "response_mutation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    MIRROR_FIELD_NUMBER: _ClassVar[int]
    MIRROR_PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_MUTATION_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_MUTATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    match: MetaRouteMatch
    route: _containers.RepeatedCompositeFieldContainer[MetaRouteDestination]
    mirror: Destination
    mirror_percentage: Percent
    request_mutation: _containers.RepeatedCompositeFieldContainer[KeyValue]
    response_mutation: _containers.RepeatedCompositeFieldContainer[KeyValue]
    def __init__(self, name: _Optional[str] = ..., match: _Optional[_Union[MetaRouteMatch, _Mapping]] = ..., route: _Optional[_Iterable[_Union[MetaRouteDestination, _Mapping]]] = ..., mirror: _Optional[_Union[Destination, _Mapping]] = ..., mirror_percentage: _Optional[_Union[Percent, _Mapping]] = ..., request_mutation: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., response_mutation: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ...) -> None: ...

class MetaRouteMatch(_message.Message):
    __slots__ = ("attributes",)
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: StringMatch
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[StringMatch, _Mapping]] = ...) -> None: ...
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    attributes: _containers.MessageMap[str, StringMatch]
    def __init__(self, attributes: _Optional[_Mapping[str, StringMatch]] = ...) -> None: ...

class StringMatch(_message.Message):
    __slots__ = ("exact", "prefix", "regex")
    EXACT_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    exact: str
    prefix: str
    regex: str
    def __init__(self, exact: _Optional[str] = ..., prefix: _Optional[str] = ..., regex: _Optional[str] = ...) -> None: ...

class MetaRouteDestination(_message.Message):
    __slots__ = ("destination", "weight")
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    destination: Destination
    weight: int
    def __init__(self, destination: _Optional[_Union[Destination, _Mapping]] = ..., weight: _Optional[int] = ...) -> None: ...

class Destination(_message.Message):
    __slots__ = ("host", "subset", "port")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SUBSET_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    host: str
    subset: str
    port: PortSelector
    def __init__(self, host: _Optional[str] = ..., subset: _Optional[str] = ..., port: _Optional[_Union[PortSelector, _Mapping]] = ...) -> None: ...

class PortSelector(_message.Message):
    __slots__ = ("number",)
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    number: int
    def __init__(self, number: _Optional[int] = ...) -> None: ...

class KeyValue(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Percent(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: float
    def __init__(self, value: _Optional[float] = ...) -> None: ...

class LocalRateLimit(_message.Message):
    __slots__ = ("token_bucket", "conditions")
    class TokenBucket(_message.Message):
        __slots__ = ("max_tokens", "tokens_per_fill", "fill_interval")
        MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
        TOKENS_PER_FILL_FIELD_NUMBER: _ClassVar[int]
        FILL_INTERVAL_FIELD_NUMBER: _ClassVar[int]
        max_tokens: int
        tokens_per_fill: _wrappers_pb2.UInt32Value
        fill_interval: _duration_pb2.Duration
        def __init__(self, max_tokens: _Optional[int] = ..., tokens_per_fill: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ..., fill_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
    class Condition(_message.Message):
        __slots__ = ("match", "token_bucket")
        MATCH_FIELD_NUMBER: _ClassVar[int]
        TOKEN_BUCKET_FIELD_NUMBER: _ClassVar[int]
        match: MetaRouteMatch
        token_bucket: LocalRateLimit.TokenBucket
        def __init__(self, match: _Optional[_Union[MetaRouteMatch, _Mapping]] = ..., token_bucket: _Optional[_Union[LocalRateLimit.TokenBucket, _Mapping]] = ...) -> None: ...
    TOKEN_BUCKET_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    token_bucket: LocalRateLimit.TokenBucket
    conditions: _containers.RepeatedCompositeFieldContainer[LocalRateLimit.Condition]
    def __init__(self, token_bucket: _Optional[_Union[LocalRateLimit.TokenBucket, _Mapping]] = ..., conditions: _Optional[_Iterable[_Union[LocalRateLimit.Condition, _Mapping]]] = ...) -> None: ...

class GlobalRateLimit(_message.Message):
    __slots__ = ("match", "domain", "request_timeout", "deny_on_fail", "rate_limit_service", "descriptors")
    class Descriptor(_message.Message):
        __slots__ = ("property", "descriptor_key")
        PROPERTY_FIELD_NUMBER: _ClassVar[int]
        DESCRIPTOR_KEY_FIELD_NUMBER: _ClassVar[int]
        property: str
        descriptor_key: str
        def __init__(self, property: _Optional[str] = ..., descriptor_key: _Optional[str] = ...) -> None: ...
    MATCH_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    DENY_ON_FAIL_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_SERVICE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTORS_FIELD_NUMBER: _ClassVar[int]
    match: MetaRouteMatch
    domain: str
    request_timeout: _duration_pb2.Duration
    deny_on_fail: bool
    rate_limit_service: str
    descriptors: _containers.RepeatedCompositeFieldContainer[GlobalRateLimit.Descriptor]
    def __init__(self, match: _Optional[_Union[MetaRouteMatch, _Mapping]] = ..., domain: _Optional[str] = ..., request_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., deny_on_fail: _Optional[bool] = ..., rate_limit_service: _Optional[str] = ..., descriptors: _Optional[_Iterable[_Union[GlobalRateLimit.Descriptor, _Mapping]]] = ...) -> None: ...

class ApplicationProtocol(_message.Message):
    __slots__ = ("protocol", "codec")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    codec: str
    def __init__(self, protocol: _Optional[str] = ..., codec: _Optional[str] = ...) -> None: ...
