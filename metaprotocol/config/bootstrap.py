"""Read an Envoy bootstrap (the shape Envoy + Aeraki's meta_protocol_proxy read).

```yaml
static_resources:
  listeners:
  - name: dubbo
    address: {socket_address: {address: 127.0.0.1, port_value: 20880}}
    filter_chains:
    - filters:
      - name: aeraki.meta_protocol_proxy
        typed_config:
          "@type": type.googleapis.com/aeraki.meta_protocol_proxy.v1alpha.MetaProtocolProxy
          stat_prefix: outbound|20880||demo
          protocol: {name: dubbo, codec: {name: aeraki.meta_protocol.codec.dubbo}}
          route_config: {name: demo_20880, routes: [...]}
  clusters:
  - name: outbound|20880|v1|demo
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    load_assignment: {cluster_name: ..., endpoints: [{lb_endpoints: [...]}]}
```

The file is read as Envoy's ``envoy.config.bootstrap.v3.Bootstrap`` message (listeners and
clusters as Envoy's ``Listener`` and ``Cluster``, the filter config as Aeraki's
``MetaProtocolProxy``) by :mod:`metaprotocol.xds.typed` and ``google.protobuf.json_format``, then
converted to the config model by :func:`metaprotocol.xds.convert.bootstrap_from_xds`: the same
conversion as xDS resources. Before that, this module only fills in what a bootstrap may leave
implied, as Envoy does: the ``@type`` of a filter's ``typed_config`` from the filter's name (and of
a rate-limit filter's config, a resource monitor's config, a codec's plain settings), Envoy's
``hash_policy: [{header: {header_name: k}}]`` as Aeraki's ``[k]``, and our cluster extensions
(``hash_function``, ``hash_tag``, ``max_consecutive_timeouts``) moved to the cluster metadata
that carries them over xDS.

Unknown fields are rejected with their path (a typo must not silently change routing), all of them
at once; fields the proxy does not honour are refused, except the Envoy fields listed as ignored in
docs/configuration.md.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2

from metaprotocol.config.errors import ConfigError
from metaprotocol.config.model import Bootstrap
from metaprotocol.xds import convert, typed

_EXTENSIONS = ("hash_function", "hash_tag", "max_consecutive_timeouts")
_FILTER_CONFIG_TYPES = {convert.LOCAL_RATELIMIT_FILTER: convert.LOCAL_RATELIMIT_TYPE, convert.GLOBAL_RATELIMIT_FILTER: convert.GLOBAL_RATELIMIT_TYPE}


def load_bootstrap(path: str | Path) -> Bootstrap:
    """Read and validate a bootstrap file.

    Raises:
        ConfigError: with the file, the path inside it and the reason.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from exc
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"not valid YAML: {exc}") from exc
    return parse_bootstrap(tree, source)


def parse_bootstrap(tree: object, source: str = "<memory>") -> Bootstrap:
    """Build a Bootstrap from an already-loaded YAML/JSON tree."""
    if tree is None:
        tree = {}
    implied = _Implied()
    tree = implied.fill(copy.deepcopy(tree))
    if implied.errors:
        raise _error(source, implied.errors)
    message = bootstrap_pb2.Bootstrap()
    errors = typed.parse(tree, message, "", typed.ENVOY)
    if errors:
        raise _error(source, errors)
    try:
        return convert.bootstrap_from_xds(message, source)
    except convert.ConversionError as exc:
        raise ConfigError(source, implied.where(exc.path), exc.reason) from None


def _error(source: str, errors: list[tuple[str, str]]) -> ConfigError:
    (path, reason), more = errors[0], errors[1:]
    if more:
        reason += "".join(f"\n  and {p or '<root>'}: {r}" for p, r in more)
    return ConfigError(source, path, reason)


def _type_of(value: object) -> object:
    """A typed_config's type, looking through a TypedStruct."""
    if not isinstance(value, Mapping):
        return None
    if value.get("@type", "").rsplit("/", 1)[-1] in typed.TYPED_STRUCTS:
        return value.get("type_url")
    return value.get("@type")


class _Implied:
    """Fills in what an Envoy bootstrap may leave implied (see the module doc), remembering what
    it moved so that errors found later still point at what the file says."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.typed_structs: list[str] = []
        self.moved: dict[str, str] = {}

    def where(self, path: str) -> str:
        """A path of the filled-in tree as a path of the file."""
        for old, new in self.moved.items():
            if path == old or path.startswith(old + "."):
                return new + path[len(old) :]
        for t in self.typed_structs:
            if path == f"{t}.@type":
                return f"{t}.type_url"
            if path.startswith(t + ".") and not path.startswith(t + ".value"):
                return f"{t}.value{path[len(t) :]}"
        return path

    def fill(self, tree: object) -> object:
        if not isinstance(tree, dict):
            return tree
        static = tree.get("static_resources")
        if isinstance(static, dict):
            for i, lst in _items(static.get("listeners")):
                for j, chain in _items(lst.get("filter_chains")):
                    for k, f in _items(chain.get("filters")):
                        self._filter(f, f"static_resources.listeners[{i}].filter_chains[{j}].filters[{k}]")
            for i, c in _items(static.get("clusters")):
                self._cluster(c, f"static_resources.clusters[{i}]")
        overload = tree.get("overload_manager")
        if isinstance(overload, dict):
            for i, m in _items(overload.get("resource_monitors")):
                self._monitor(m, f"overload_manager.resource_monitors[{i}]")
        return tree

    def _typed(self, holder: dict[str, Any], key: str, path: str, expected: str, default: bool = True) -> dict[str, Any] | None:
        """``holder[key]``, an Any of type ``expected`` (filled in when absent), or a TypedStruct
        of it; returns the message's own fields (for more filling in)."""
        value = holder.get(key)
        if value is None and default:
            value = holder[key] = {}
        if not isinstance(value, dict):
            return None
        kind = value.get("@type")
        if isinstance(kind, str) and kind.rsplit("/", 1)[-1] in typed.TYPED_STRUCTS:
            self.typed_structs.append(path)
            if value.get("type_url") != expected:
                self.errors.append((f"{path}.type_url", f"expected {expected}"))
            inner = value.get("value")
            return inner if isinstance(inner, dict) else None
        if kind is None:
            value["@type"] = expected
        elif kind != expected:
            self.errors.append((f"{path}.@type", f"expected {expected}"))
            return None
        return value

    def _filter(self, f: dict[str, Any], path: str) -> None:
        name, kind = f.get("name"), _type_of(f.get("typed_config"))
        if name in convert.FILTER_NAMES or kind == convert.PROXY_TYPE:
            cfg = self._typed(f, "typed_config", f"{path}.typed_config", convert.PROXY_TYPE)
            if cfg is not None:
                self._proxy(cfg, f"{path}.typed_config.value" if f"{path}.typed_config" in self.typed_structs else f"{path}.typed_config")
        elif name == convert.CONNECTION_LIMIT_FILTER or kind == convert.CONNECTION_LIMIT_TYPE:
            self._typed(f, "typed_config", f"{path}.typed_config", convert.CONNECTION_LIMIT_TYPE)
        else:
            self.errors.append((f"{path}.name", f"unsupported network filter {name!r}"))

    def _proxy(self, cfg: dict[str, Any], path: str) -> None:
        for holder, hp in ((cfg.get("protocol"), f"{path}.protocol"), (cfg, path)):
            codec = holder.get("codec") if isinstance(holder, dict) else None
            if not isinstance(codec, dict):
                continue
            settings = codec.get("config")
            if isinstance(settings, dict) and (settings.get("@type") in (None, convert.STRUCT_TYPE)) and "value" not in settings:
                # plain settings for the codec: a Struct
                codec["config"] = {"@type": convert.STRUCT_TYPE, "value": {k: v for k, v in settings.items() if k != "@type"}}
                self.moved[f"{hp}.codec.config.value"] = f"{hp}.codec.config"
        for i, mf in _items(cfg.get("meta_protocol_filters")):
            expected = _FILTER_CONFIG_TYPES.get(mf.get("name"))  # type: ignore[arg-type]
            if expected is not None:
                self._typed(mf, "config", f"{path}.meta_protocol_filters[{i}].config", expected)
        rc = cfg.get("route_config")
        for _, route in _items(rc.get("routes") if isinstance(rc, dict) else None):
            action = route.get("route")
            policies = action.get("hash_policy") if isinstance(action, dict) else None
            if not isinstance(policies, list):
                continue
            for k, h in enumerate(policies):
                header = h.get("header") if isinstance(h, dict) else None
                if isinstance(header, dict) and isinstance(header.get("header_name"), str) and set(h) == {"header"} and set(header) == {"header_name"}:
                    policies[k] = header["header_name"]  # Envoy's form of the same key

    def _cluster(self, c: dict[str, Any], path: str) -> None:
        for key in _EXTENSIONS:
            if key not in c:
                continue
            value = c.pop(key)
            if key == "max_consecutive_timeouts":
                if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                    value = int(value)
                if isinstance(value, bool) or not isinstance(value, int):
                    self.errors.append((f"{path}.{key}", f"expected an integer, got {value!r}"))
                    continue
                if value < 0:
                    self.errors.append((f"{path}.{key}", "must not be negative (0: never close)"))
                    continue
            elif not isinstance(value, str):
                self.errors.append((f"{path}.{key}", f"expected a string, got {value!r}"))
                continue
            metadata = c.setdefault("metadata", {})
            fm = metadata.setdefault("filter_metadata", {}) if isinstance(metadata, dict) else None
            ext = fm.setdefault(convert.EXT_METADATA, {}) if isinstance(fm, dict) else None
            if isinstance(ext, dict):
                ext[key] = value
                self.moved[f"{path}.metadata.filter_metadata.{convert.EXT_METADATA}.{key}"] = f"{path}.{key}"
        for i, hc in _items(c.get("health_checks")):
            custom = hc.get("custom_health_check")
            if isinstance(custom, dict) and custom.get("typed_config") is not None:
                self._typed(custom, "typed_config", f"{path}.health_checks[{i}].custom_health_check.typed_config", convert.STRUCT_TYPE)

    def _monitor(self, m: dict[str, Any], path: str) -> None:
        name = m.get("name")
        if name not in convert.OVERLOAD_MONITORS:
            options = ", ".join(sorted(convert.OVERLOAD_MONITORS))
            self.errors.append((f"{path}.name", f"unsupported resource monitor {name!r} (one of {options})"))
            return
        cls, _ = convert.OVERLOAD_MONITORS[name]
        self._typed(m, "typed_config", f"{path}.typed_config", convert.type_url(cls))


def _items(value: object) -> list[tuple[int, dict[str, Any]]]:
    """The mappings of a list, with their indexes (anything else is left to the typed check)."""
    return [(i, v) for i, v in enumerate(value) if isinstance(v, dict)] if isinstance(value, list) else []
