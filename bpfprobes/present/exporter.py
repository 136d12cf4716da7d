"""A run's figures for Prometheus: /metrics over HTTP in the Prometheus text
format, written by prometheus_client (its exposition and its process
collector: CPU, RSS); we hold only the socket and the latest snapshot.

The run's loop takes the snapshot (reading the kernel's tables there, on the
main thread, while they exist) and the server thread hands out the last one:
a scrape never touches a BPF map, and one during teardown sees the last figures.
"""
from __future__ import annotations

import socket
import threading
from typing import Iterable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer

from bpfprobes.base.errors import KernelError

PREFIX = "bpfprobes_"


class _Quiet(WSGIRequestHandler):
    timeout = 10            # a client that connects and sends nothing holds a thread no longer

    def log_message(self, *args) -> None:      # a line per scrape is noise on stderr
        pass


class Exporter:
    """Serves `/metrics` on (host, port) from the moment it is made (bound first:
    a port in use is one line before anything is attached) until close()."""

    def __init__(self, host: str, port: int, flag: str = "--prometheus") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self._families: list[Metric] = []
        self._lock = threading.Lock()
        self.registry.register(self)
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            server = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
            self.httpd = make_server(host, port, make_wsgi_app(self.registry), server,
                                     handler_class=_Quiet)
        except OSError as e:
            raise KernelError(f"cannot serve metrics on {host}:{port}: "
                              f"{e.strerror or e}", f"choose another {flag} ADDR:PORT") \
                from None
        shown = f"[{host}]" if ":" in host else host        # an IPv6 address in a URL
        self.address = f"{shown}:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics",
                                       daemon=True)
        self.thread.start()

    def publish(self, families: Iterable[Metric]) -> None:
        """The figures the next scrapes get."""
        families = list(families)
        with self._lock:
            self._families = families

    def collect(self) -> list[Metric]:
        with self._lock:
            return list(self._families)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "Exporter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def label(text: str) -> str:
    """A label value from the traced system (a comm, a symbol): exact text, but a
    byte that was not UTF-8 (a surrogate escape) as `\\xNN`, which the text
    format can carry (prometheus_client escapes quotes, backslashes, newlines)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def counter(name: str, doc: str, labels: list[str],
            samples: Iterable[tuple[list[str], float]]) -> CounterMetricFamily:
    """A counter family `bpfprobes_NAME_total` with one sample per label values."""
    return _family(CounterMetricFamily, name, doc, labels, samples)


def gauge(name: str, doc: str, labels: list[str],
          samples: Iterable[tuple[list[str], float]]) -> GaugeMetricFamily:
    """A gauge family `bpfprobes_NAME` with one sample per label values."""
    return _family(GaugeMetricFamily, name, doc, labels, samples)


def _family(kind, name: str, doc: str, labels: list[str],
            samples: Iterable[tuple[list[str], float]]):
    family = kind(PREFIX + name, doc, labels=labels)
    for values, value in samples:
        family.add_metric([label(v) for v in values], value)
    return family
