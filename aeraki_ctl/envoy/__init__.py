"""Stock Envoy as a second data plane: the config model rendered with Envoy's own filters."""
