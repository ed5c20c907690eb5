"""Stock Envoy as a data plane of aeraki-ctl: the per-codec translations, checked by the real Envoy."""
