"""The representative benchmark suite (issue 15): varied Dubbo, Thrift and Redis traffic replayed
from prebuilt corpora by bench/loadgen.c, our proxy beside Envoy, twemproxy and haproxy in one run.

Run it with ``scripts/bench-representative [--quick]``; see docs/performance.md.
"""
