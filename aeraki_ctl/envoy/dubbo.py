"""Dubbo listeners for stock Envoy: ``envoy.filters.network.dubbo_proxy`` (Dubbo, Hessian2) with
its route table over RDS.

The routes travel as their own resource (``MultipleRouteConfiguration``, ``DUBBO_ROUTE_TYPE``,
named like the listener) through ``drds`` on the ADS stream, so a MetaRouter edit changes the
route table only: Envoy keeps the listener, and the new split applies to the connections already
open (a listener change would drain them).

How a route table maps. Envoy's dubbo router tries its ``RouteConfiguration``s in order and, in
each whose ``interface`` (and ``version``) the request has, its routes in order; the first route
that matches wins. Our routes are first-match too, so consecutive routes that ask the same of the
interface and version share one ``RouteConfiguration`` and the order is kept:

* ``interface``: no matcher or ``present`` -> ``*`` (every request has one); ``exact`` -> the
  name; ``prefix`` p -> two configurations, ``p`` and ``p*`` (Envoy's ``p*`` wants more than p);
  ``suffix`` s -> ``s`` and ``*s``. Anything else (regex, contains, invert, ignore-case, a
  required absence, a value with a ``*`` at either end) is fatal.
* ``version`` (the body's service version): ``exact`` -> ``RouteConfiguration.version``; anything
  else is fatal (Envoy compares it for equality only).
* ``method`` -> ``MethodMatch.name``, a StringMatcher (exact/prefix/suffix/contains/regex,
  ignore-case; none or ``present`` -> regex ``.*``); invert or a required absence is fatal.
* ``dubbo`` (the protocol version of the body) has no Envoy counterpart: fatal.
* every other attribute is an attachment, which Envoy exposes as a lower-cased header:
  ``headers`` with ``convert.header_matcher`` (exact/prefix/suffix/contains/regex/present, invert,
  ignore-case: Envoy's semantics are ours). Approximated without a report (it cannot be seen in
  the config): Envoy sees string-valued attachments only, our codec also numbers and booleans.
* a regex Envoy's RE2 would refuse (look-around, back-references, possessive quantifiers) is fatal,
  not sent: Envoy would reject the whole listener's route table.
* ``cluster`` / ``weighted_clusters`` and ``subset`` (``metadata_match`` under ``envoy.lb``)
  carry over.

Per feature, fatal (the route would mean something else: the listener is not served to Envoy,
which keeps its last translatable version) or approximated (served, reported):

* ``requestMutation`` / ``responseMutation``: fatal. The provider (or the consumer) would not get
  the attachments the route sets; dubbo_proxy has no mutation.
* ``fault``: fatal. The delays and aborts are what the route is for; without them a chaos test
  would pass silently.
* the listener's own features (rate limits, authorization, idle timeout, access log, connection
  limit, TLS, pooling knobs) are decided once for every Envoy filter in ``network.py``: rate
  limits and authorization on request attributes (interface, method, attachments) are fatal (not
  enforced per call); connection-level authorization is Envoy's network RBAC filter
  (approximated: a refused client's connection is closed instead of getting one error reply per
  call); the connection limit and TLS are exact; the rest is approximated.
* ``mirror``: approximated (no shadow traffic; the caller's replies are the same).
* ``retry``: approximated (dubbo_proxy never retries; failures reach the caller sooner).
* a route ``timeout`` other than the default: approximated; the dubbo router has no timeout, a
  call waits for its reply or for its connection to close (also true of the default 15 s, not
  reported per route).
* consistent hash (``hash_policy``, from a DestinationRule's ``consistentHash.httpHeaderName``):
  approximated; the dubbo router gives the load balancer no hash key, so a RING_HASH/MAGLEV
  cluster picks endpoints at random. The split between clusters is unchanged.
* codec settings (``payload_limit``, ``non_hessian2``): approximated; dubbo_proxy has its own
  limits and takes Hessian2 only.

generic_proxy as the alternative. ``envoy.filters.network.generic_proxy`` with its Dubbo codec
(``DubboCodecConfig``, routes over ``generic_rds``: a ``generic_proxy.v3.RouteConfiguration`` named
like the listener) is rendered too, and serves the listener when it has fewer fatal gaps, then
fewer approximated ones (dubbo_proxy, the stable API, wins a tie). What it adds: a matcher tree
(the service, the method and any property with any StringMatcher, and/or/not), so interface
regexes, inverted and case-insensitive interface or method matches, a non-exact version and
required absences are exact; the route ``timeout`` (exact) and a retry policy (``num_retries``
only: approximated, reported). What it lacks: weighted clusters (Envoy 1.40 accepts the config
and answers every request of the route with an error: fatal; a split with one non-zero weight is
that destination) and ``metadata_match`` (a subset: fatal); the ``dubbo`` attribute is not
exposed; mutations, faults, mirrors, hashing and the listener's features are as for dubbo_proxy.
Its property lookup reads the attachment by its exact name (ours are lower-cased) and sees string
values only; ``version`` is the service version. A MetaRouter edit that moves a listener from one
filter to the other changes the listener, so Envoy drains its connections (a route edit within
one filter does not).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, TypeAlias

from envoy.config.core.v3 import extension_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.dubbo_proxy.router.v3 import router_pb2
from envoy.extensions.filters.network.dubbo_proxy.v3 import dubbo_proxy_pb2, route_pb2
from envoy.extensions.filters.network.generic_proxy.action.v3 import action_pb2 as generic_action_pb2
from envoy.extensions.filters.network.generic_proxy.codecs.dubbo.v3 import dubbo_pb2 as dubbo_codec_pb2
from envoy.extensions.filters.network.generic_proxy.matcher.v3 import matcher_pb2 as generic_matcher_pb2
from envoy.extensions.filters.network.generic_proxy.router.v3 import router_pb2 as generic_router_pb2
from envoy.extensions.filters.network.generic_proxy.v3 import generic_proxy_pb2
from envoy.extensions.filters.network.generic_proxy.v3 import route_pb2 as generic_route_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import duration_pb2, struct_pb2, wrappers_pb2
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import matcher_pb2
from xds.type.matcher.v3 import regex_pb2 as xds_regex_pb2
from xds.type.matcher.v3 import string_pb2 as xds_string_pb2

from aeraki_ctl.envoy import network
from aeraki_ctl.envoy.common import DUBBO_ROUTE_TYPE, GENERIC_ROUTE_TYPE, EnvoyListener, Gap, ads, route_path, typed
from metaprotocol.config.model import (
    DEFAULT_ROUTE_TIMEOUT,
    AttributeMatcher,
    ClusterConfig,
    ListenerConfig,
    MatchKind,
    RouteRule,
)
from metaprotocol.xds import convert

FILTER: Final = "envoy.filters.network.dubbo_proxy"
ROUTER: Final = "envoy.filters.dubbo.router"
GENERIC_FILTER: Final = "envoy.filters.network.generic_proxy"
GENERIC_ROUTER: Final = "envoy.filters.generic.router"
GENERIC_CODEC: Final = "envoy.generic_proxy.codecs.dubbo"
_Predicate: TypeAlias = matcher_pb2.Matcher.MatcherList.Predicate
ANY_METHOD: Final = ".*"


def listener(lst: ListenerConfig, clusters: Mapping[str, ClusterConfig]) -> EnvoyListener:
    """``lst`` for Envoy: with dubbo_proxy, or with generic_proxy when that expresses the route
    table better (fewer fatal gaps, then fewer approximated ones; dubbo_proxy on a tie)."""
    dubbo = dubbo_listener(lst)
    generic = generic_listener(lst)
    return generic if _cost(generic) < _cost(dubbo) else dubbo


def _cost(out: EnvoyListener) -> tuple[int, int]:
    fatal = sum(g.fatal for g in out.gaps)
    return fatal, len(out.gaps) - fatal


def _listener_gaps(lst: ListenerConfig, filter_name: str) -> list[Gap]:
    """What the listener itself has that the filter cannot do (``network.py``, and the codec settings)."""
    gaps: list[Gap] = []
    if lst.route_config is None:
        gaps.append(Gap("", f"the listener's routes come over RDS ({lst.rds_name}) in our proxy's shape: aeraki-ctl must give the table itself to translate it"))
    gaps.extend(network.listener_gaps(lst, filter_name))
    if lst.codec.config:
        gaps.append(Gap("codec.config", f"{filter_name} has no codec settings ({', '.join(sorted(lst.codec.config))} not applied; its own limits apply)", fatal=False))
    return gaps


def dubbo_listener(lst: ListenerConfig) -> EnvoyListener:
    """``lst`` as an Envoy listener running dubbo_proxy, its route table (over RDS), and every
    gap (see the module's docstring)."""
    gaps = _listener_gaps(lst, "dubbo_proxy")
    table = route_table(lst, gaps)
    proxy = dubbo_proxy_pb2.DubboProxy(
        stat_prefix=lst.stat_prefix,
        protocol_type=dubbo_proxy_pb2.Dubbo,
        serialization_type=dubbo_proxy_pb2.Hessian2,
        drds=dubbo_proxy_pb2.Drds(config_source=ads(), route_config_name=lst.name),
        dubbo_filters=[dubbo_proxy_pb2.DubboFilter(name=ROUTER, config=typed(router_pb2.Router()))],
    )
    out = network.envoy_listener(lst, listener_components_pb2.Filter(name=FILTER, typed_config=typed(proxy)))
    return EnvoyListener(out, [(DUBBO_ROUTE_TYPE, lst.name, table)], network.fatal_first(gaps))


def route_table(lst: ListenerConfig, gaps: list[Gap]) -> route_pb2.MultipleRouteConfiguration:
    """The listener's routes as dubbo_proxy's RDS resource (named like the listener); each route
    Envoy cannot express is left out with a fatal gap in ``gaps``."""
    groups: list[tuple[tuple[tuple[str, ...], str], list[route_pb2.Route]]] = []
    for i, rule in enumerate(lst.route_config.routes if lst.route_config else ()):
        made = _route(i, rule, gaps)
        if made is None:
            continue
        key, route = made
        if groups and groups[-1][0] == key:
            groups[-1][1].append(route)
        else:
            groups.append((key, [route]))
    out = route_pb2.MultipleRouteConfiguration(name=lst.name)
    for (interfaces, version), routes in groups:
        for interface in interfaces:
            out.route_config.add(name=f"{lst.name}#{len(out.route_config)}", interface=interface, version=version, routes=routes)
    return out


def _route(i: int, rule: RouteRule, gaps: list[Gap]) -> tuple[tuple[tuple[str, ...], str], route_pb2.Route] | None:
    """One route: its (interface patterns, version) key and its message; None after a fatal gap."""
    before = len(gaps)
    interfaces: tuple[str, ...] = ("*",)
    version = ""
    method = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=ANY_METHOD))
    headers: list[route_components_pb2.HeaderMatcher] = []
    for m in rule.match:
        where = route_path(i, rule, f"match.attributes.{m.name}")
        regex_gap = network.re2_gap(m)
        if regex_gap:
            gaps.append(Gap(where, regex_gap))
        elif m.name == "interface":
            found = _interfaces(m)
            if isinstance(found, str):
                gaps.append(Gap(where, found))
            else:
                interfaces = found
        elif m.name == "version":
            if m.kind is MatchKind.EXACT and m.value and not (m.invert or m.ignore_case):
                version = m.value
            else:
                gaps.append(Gap(where, "Envoy's dubbo_proxy compares the service version for equality only (RouteConfiguration.version): exact, case-sensitive, not inverted"))
        elif m.name == "method":
            found_method = _method(m)
            if isinstance(found_method, str):
                gaps.append(Gap(where, found_method))
            else:
                method = found_method
        elif m.name == "dubbo":
            gaps.append(Gap(where, "Envoy's dubbo_proxy does not match on the Dubbo protocol version of the request body"))
        else:
            h = convert.header_matcher(m)
            if h.HasField("string_match"):
                h.string_match.CopyFrom(_case_in_regex(h.string_match))
            headers.append(h)
    gaps.extend(_route_gaps(i, rule, "dubbo_proxy"))
    a = rule.action
    if rule.retry is not None:
        gaps.append(Gap(route_path(i, rule, "retry"), "Envoy's dubbo router never retries: a failed call reaches the caller on its first failure", fatal=False))
    if a.timeout != DEFAULT_ROUTE_TIMEOUT:
        gaps.append(Gap(route_path(i, rule, "timeout"), f"Envoy's dubbo router has no request timeout ({a.timeout:g} s here): a call waits for its reply or its connection's end", fatal=False))
    if len(gaps) > before and any(g.fatal for g in gaps[before:]):
        return None
    action = route_pb2.RouteAction()
    if a.cluster is not None:
        action.cluster = a.cluster
    else:
        action.weighted_clusters.clusters.extend(route_components_pb2.WeightedCluster.ClusterWeight(name=w.name, weight=wrappers_pb2.UInt32Value(value=w.weight)) for w in a.weighted_clusters)
    if a.subset:
        fields = struct_pb2.Struct()
        fields.update(dict(a.subset))
        action.metadata_match.filter_metadata["envoy.lb"].CopyFrom(fields)
    route = route_pb2.Route(match=route_pb2.RouteMatch(method=route_pb2.MethodMatch(name=method), headers=headers), route=action)
    return (interfaces, version), route


def _route_gaps(i: int, rule: RouteRule, filter_name: str) -> list[Gap]:
    """What neither dubbo_proxy nor generic_proxy does for a route: mutations, faults, mirrors, hashing."""
    gaps = [
        Gap(route_path(i, rule, tail), reason)
        for tail, present, reason in (
            ("requestMutation", rule.request_mutation, f"Envoy's {filter_name} cannot set request attachments: the provider would not get them"),
            ("responseMutation", rule.response_mutation, f"Envoy's {filter_name} cannot set response attachments: the consumer would not get them"),
            ("fault", rule.fault, f"Envoy's {filter_name} has no fault injection: the route's delays and aborts would not happen"),
        )
        if present
    ]
    if rule.mirrors:
        gaps.append(Gap(route_path(i, rule, "mirror"), f"Envoy's {filter_name} cannot mirror requests: no shadow traffic is sent (the replies are unchanged)", fatal=False))
    if rule.action.hash_policy:
        keys = ", ".join(rule.action.hash_policy)
        why = f"consistent hash on {keys}: Envoy's {filter_name} router gives the load balancer no hash key, so RING_HASH/MAGLEV picks endpoints at random (the split between destinations is unchanged)"
        gaps.append(Gap(route_path(i, rule, "route"), why, fatal=False))
    return gaps


def _interfaces(m: AttributeMatcher) -> tuple[str, ...] | str:
    """The RouteConfiguration.interface patterns that together match what ``m`` matches, or why none can."""
    if m.invert or m.ignore_case:
        return "Envoy's dubbo_proxy matches the interface case-sensitively and cannot invert the match"
    if m.kind is MatchKind.PRESENT:
        return ("*",) if m.value != "false" else "a Dubbo request always names its interface: a route that wants none never matches, and Envoy cannot say so"
    if m.kind not in (MatchKind.EXACT, MatchKind.PREFIX, MatchKind.SUFFIX):
        return f"Envoy's dubbo_proxy matches the interface by exact name, prefix or suffix only, not {m.kind.value}"
    if m.value.startswith("*") or m.value.endswith("*"):
        return f"{m.value!r}: a '*' at either end is a wildcard in Envoy's interface match"
    if m.kind is MatchKind.EXACT:
        return (m.value,)
    if m.kind is MatchKind.PREFIX:
        return (m.value, f"{m.value}*") if m.value else ("*",)
    return (m.value, f"*{m.value}") if m.value else ("*",)


def _method(m: AttributeMatcher) -> string_pb2.StringMatcher | str:
    """MethodMatch.name for ``m``, or why it cannot be."""
    if m.invert:
        return "Envoy's dubbo_proxy cannot invert a method match (MethodMatch.name is a StringMatcher)"
    if m.kind is MatchKind.PRESENT:
        if m.value == "false":
            return "a Dubbo request always names its method: a route that wants none never matches, and Envoy cannot say so"
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=ANY_METHOD))
    if m.kind in (MatchKind.PREFIX, MatchKind.SUFFIX, MatchKind.CONTAINS) and not m.value:  # Envoy wants them non-empty
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=ANY_METHOD))
    return _case_in_regex(convert.header_matcher(m).string_match)


def _case_in_regex(sm: string_pb2.StringMatcher) -> string_pb2.StringMatcher:
    """Envoy ignores ``ignore_case`` on a regex: the regex says it instead (RE2's ``(?i)``)."""
    if sm.ignore_case and sm.HasField("safe_regex"):
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=f"(?i){sm.safe_regex.regex}"))
    return sm


# -- generic_proxy with its Dubbo codec -----------------------------------------------------------


def generic_listener(lst: ListenerConfig) -> EnvoyListener:
    """``lst`` as an Envoy listener running generic_proxy with its Dubbo codec, its route table
    over RDS (``generic_rds``), and every gap (the listener's own ones as for dubbo_proxy)."""
    gaps = _listener_gaps(lst, "generic_proxy")
    table = generic_route_table(lst, gaps)
    proxy = generic_proxy_pb2.GenericProxy(
        stat_prefix=lst.stat_prefix,
        codec_config=extension_pb2.TypedExtensionConfig(name=GENERIC_CODEC, typed_config=typed(dubbo_codec_pb2.DubboCodecConfig())),
        generic_rds=generic_proxy_pb2.GenericRds(config_source=ads(), route_config_name=lst.name),
        filters=[extension_pb2.TypedExtensionConfig(name=GENERIC_ROUTER, typed_config=typed(generic_router_pb2.Router()))],
    )
    out = network.envoy_listener(lst, listener_components_pb2.Filter(name=GENERIC_FILTER, typed_config=typed(proxy)))
    return EnvoyListener(out, [(GENERIC_ROUTE_TYPE, lst.name, table)], network.fatal_first(gaps))


def generic_route_table(lst: ListenerConfig, gaps: list[Gap]) -> generic_route_pb2.RouteConfiguration:
    """The listener's routes as generic_proxy's RDS resource: one matcher list, first match wins
    (as ours); each route it cannot express is left out with a fatal gap in ``gaps``."""
    matchers = []
    for i, rule in enumerate(lst.route_config.routes if lst.route_config else ()):
        made = _generic_route(i, rule, gaps)
        if made is not None:
            matchers.append(made)
    out = generic_route_pb2.RouteConfiguration(name=lst.name)
    if matchers:
        out.routes.matcher_list.matchers.extend(matchers)
    return out


def _generic_route(i: int, rule: RouteRule, gaps: list[Gap]) -> matcher_pb2.Matcher.MatcherList.FieldMatcher | None:
    """One route as a matcher (the AND of its attributes' predicates) and its action; None after a fatal gap."""
    before = len(gaps)
    predicates = []
    for m in rule.match:
        where = route_path(i, rule, f"match.attributes.{m.name}")
        regex_gap = network.re2_gap(m)
        if regex_gap:
            gaps.append(Gap(where, regex_gap))
        elif m.name == "dubbo":
            gaps.append(Gap(where, "Envoy's generic_proxy Dubbo codec does not expose the Dubbo protocol version of the request body"))
        else:
            predicates.append(_predicate(m))
    gaps.extend(_route_gaps(i, rule, "generic_proxy"))
    a = rule.action
    action = generic_action_pb2.RouteAction(name=rule.name, timeout=_duration(a.timeout))
    live = [w.name for w in a.weighted_clusters if w.weight > 0]
    if a.cluster is not None:
        action.cluster = a.cluster
    elif len(live) == 1:  # a split with one live destination (100/0) is that destination
        action.cluster = live[0]
    else:
        gaps.append(Gap(route_path(i, rule, "route"), "Envoy's generic_proxy does not implement weighted_clusters (Envoy 1.40 answers every request of such a route with an error)"))
    if a.subset:
        gaps.append(Gap(route_path(i, rule, "route"), "Envoy's generic_proxy route has no metadata_match: the subset would not be selected"))
    if rule.retry is not None:
        action.retry_policy.num_retries.value = rule.retry.num_retries + 1  # generic_proxy counts the first try
        why = f"generic_proxy tries up to {rule.retry.num_retries + 1} times on its own conditions: retry_on, per_try_timeout and the idempotency rule are not applied"
        gaps.append(Gap(route_path(i, rule, "retry"), why, fatal=False))
    if len(gaps) > before and any(g.fatal for g in gaps[before:]):
        return None
    if not predicates:
        predicate = _present("interface")  # every request names one: this matches all
    elif len(predicates) == 1:
        predicate = predicates[0]
    else:
        predicate = _Predicate(and_matcher=_Predicate.PredicateList(predicate=predicates))
    on_match = matcher_pb2.Matcher.OnMatch(action=xds_extension_pb2.TypedExtensionConfig(name=rule.name, typed_config=typed(action)))
    return matcher_pb2.Matcher.MatcherList.FieldMatcher(predicate=predicate, on_match=on_match)



def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def _input(name: str) -> xds_extension_pb2.TypedExtensionConfig:
    """What a matcher reads: the service (interface), the method, or a property (``version``:
    the service version; any other name: the attachment)."""
    if name == "interface":
        return xds_extension_pb2.TypedExtensionConfig(name="service", typed_config=typed(generic_matcher_pb2.ServiceMatchInput()))
    if name == "method":
        return xds_extension_pb2.TypedExtensionConfig(name="method", typed_config=typed(generic_matcher_pb2.MethodMatchInput()))
    return xds_extension_pb2.TypedExtensionConfig(name=name, typed_config=typed(generic_matcher_pb2.PropertyMatchInput(property_name=name)))


def _single(name: str, value: xds_string_pb2.StringMatcher) -> _Predicate:
    return _Predicate(single_predicate=_Predicate.SinglePredicate(input=_input(name), value_match=value))


def _any_value() -> xds_string_pb2.StringMatcher:
    return xds_string_pb2.StringMatcher(safe_regex=xds_regex_pb2.RegexMatcher(google_re2=xds_regex_pb2.RegexMatcher.GoogleRE2(), regex="(?s).*"))


def _present(name: str) -> _Predicate:
    """True when the request has the attribute (an absent input matches no value)."""
    return _single(name, _any_value())


def _predicate(m: AttributeMatcher) -> _Predicate:
    """``m`` with HeaderMatcher semantics: a value test never matches an absent attribute, even
    inverted (so an inverted test is "present and not the test")."""
    if m.kind is MatchKind.PRESENT:
        return _present(m.name) if m.value != "false" else _Predicate(not_matcher=_present(m.name))
    if m.kind is MatchKind.EXACT:
        value = xds_string_pb2.StringMatcher(exact=m.value, ignore_case=m.ignore_case)
    elif not m.value and m.kind is not MatchKind.REGEX:  # an empty prefix, suffix or substring: any value
        value = _any_value()
    elif m.kind is MatchKind.REGEX:
        regex = f"(?i){m.value}" if m.ignore_case else m.value
        value = xds_string_pb2.StringMatcher(safe_regex=xds_regex_pb2.RegexMatcher(google_re2=xds_regex_pb2.RegexMatcher.GoogleRE2(), regex=regex))
    else:
        value = xds_string_pb2.StringMatcher(ignore_case=m.ignore_case, **{m.kind.value: m.value})
    test = _single(m.name, value)
    if not m.invert:
        return test
    return _Predicate(and_matcher=_Predicate.PredicateList(predicate=[_present(m.name), _Predicate(not_matcher=test)]))
