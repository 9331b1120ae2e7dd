"""Where the metrics (prometheus.py) go out, both optional ([metrics] in the config):

* `HttpEndpoint`: an HTTP endpoint on a local port (127.0.0.1 by default) for a local
  agent or a reverse proxy, bounded in threads, connections and time (prometheus_http.py);
* `TextfileWriter`: `edgeagent.prom` in node_exporter's textfile-collector directory,
  replaced atomically with every heartbeat - the usual choice on a Pi that already runs
  node_exporter.

`MetricsExport` holds the metrics and whichever of the two is on; it is what the daemon
keeps (service/views/operators.py).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import structlog

from edgeagent.config import MetricsConfig
from edgeagent.protocol.heartbeat import Heartbeat
from edgeagent.service.views.prometheus import Metrics
from edgeagent.service.views.prometheus_http import MetricsServer

# The logger name these lines have always had (before the export left prometheus.py), so
# a journal filter on it still finds them.
log = structlog.get_logger("edgeagent.service.views.prometheus")

TEXTFILE_NAME = "edgeagent.prom"


class TextfileWriter:
    """`<dir>/edgeagent.prom` for node_exporter's textfile collector."""

    def __init__(self, directory: Path, metrics: Metrics) -> None:
        self.path = directory / TEXTFILE_NAME
        self.metrics = metrics

    def write(self) -> None:
        """Replace the file in one rename, so node_exporter never reads half of it.

        The temporary file gets an unpredictable name, created by mkstemp with
        O_CREAT|O_EXCL|O_NOFOLLOW: whoever can write to the collector's directory cannot
        plant a link there that this write would follow into another file (a fixed name
        did, and made a 0600 file 0644 metrics text). The rename replaces a link at
        `edgeagent.prom` itself, never the file it points to. The temporary name does
        not end in .prom, which the collector ignores.
        """
        fd, name = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{TEXTFILE_NAME}.", suffix=".tmp"
        )
        tmp = Path(name)
        try:
            # 0644 despite the service's UMask=0077: node_exporter runs as another user.
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as out:
                fd = -1  # closed by the file object from here on
                out.write(self.metrics.exposition())
            tmp.replace(self.path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
            raise

    def remove(self) -> None:
        """At shutdown: stale numbers are worse than none (node_exporter's own
        `node_textfile_mtime_seconds` tells when the file was last written)."""
        self.path.unlink(missing_ok=True)


class HttpEndpoint:
    """This daemon's metrics over HTTP, bounded in threads, connections and time
    (service/views/prometheus_http.py)."""

    def __init__(self, metrics: Metrics, address: str, port: int) -> None:
        self.metrics = metrics
        self.address = address
        self.port = port
        self._server: MetricsServer | None = None

    def start(self) -> None:
        server = MetricsServer(self.metrics.registry, self.address, self.port)
        server.start()
        self._server = server
        self.port = server.port  # the real one when 0 was asked for
        log.info("metrics endpoint", address=self.address, port=self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


class MetricsExport:
    """The metrics and the ways out that [metrics] turns on; what the daemon holds."""

    def __init__(self, cfg: MetricsConfig, device_id: str, model: str = "") -> None:
        self.metrics = Metrics(device_id, model)
        self.textfile = TextfileWriter(cfg.textfile_dir, self.metrics) if cfg.textfile_dir else None
        self.http = HttpEndpoint(self.metrics, cfg.address, cfg.port) if cfg.port else None
        self._textfile_failed = False

    def start(self) -> None:
        if self.http is not None:
            try:
                self.http.start()
            except OSError as exc:
                # Metrics are an extra: a taken port must not keep the daemon from serving.
                log.error("metrics endpoint not started", port=self.http.port, error=str(exc))  # noqa: TRY400 - the reason is the message
                self.http = None

    def refresh(
        self,
        heartbeat: Heartbeat,
        *,
        journal_rows: int | None = None,
        connects: int | None = None,
        puback_refusals: int | None = None,
    ) -> None:
        """With every heartbeat: update the gauges, rewrite the textfile."""
        self.metrics.observe(
            heartbeat,
            journal_rows=journal_rows,
            connects=connects,
            puback_refusals=puback_refusals,
        )
        if self.textfile is None:
            return
        try:
            self.textfile.write()
        except OSError as exc:
            if not self._textfile_failed:  # once per episode, not every heartbeat
                log.warning(
                    "metrics textfile not written", path=str(self.textfile.path), error=str(exc)
                )
            self._textfile_failed = True
        else:
            self._textfile_failed = False

    def stop(self) -> None:
        if self.http is not None:
            self.http.stop()
        if self.textfile is not None:
            with contextlib.suppress(OSError):
                self.textfile.remove()
