"""The figures a benchmark's JSON holds, read for the capacity plan (``comet.tune --from``).

This module owns the mapping from a ``python -m flood.bench --json`` document (or the
minimal schema docs/tuning.rst gives) to :class:`comet.capacity.Figures`: which field is
which figure, what is refused, and where each figure came from. A figure the document
lacks is :data:`comet.capacity.DEFAULT_FIGURES`' and says so. The arithmetic on the
figures is :mod:`comet.capacity`'s.
"""

from __future__ import annotations

import json
from pathlib import Path

from comet.capacity import BENCH_TRANSPORTS, DEFAULT_FIGURES, TRANSPORTS, Figures


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{where} must be a positive number of KB, not {value!r}")
    return float(value)


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _bench_kernel(row: dict) -> object:
    """flood.bench's kernel figure: slab growth plus TCP buffer pages, per connection."""
    slab, pages = row.get("slab_kb_per_conn"), row.get("tcp_mem_kb_per_conn") or 0
    return slab + pages if isinstance(slab, (int, float)) and isinstance(pages, (int, float)) \
        else slab


def _server_kb(row: dict, where: str) -> tuple[float, str]:
    """PSS growth where the row has a positive one (a master's workers share pages), else RSS."""
    if _positive(row.get("server_pss_kb_per_conn")):
        return float(row["server_pss_kb_per_conn"]), "server_pss_kb_per_conn"
    return _number(row["server_kb_per_conn"], f"{where}.server_kb_per_conn"), \
        "server_kb_per_conn (RSS)"


def _bench_processes(data: dict, name: str) -> dict:
    """The per-connection and per-process figures a flood.bench document has, by field name.

    Redis and the flood per connection are its growth per held connection; a server
    process, its PSS before the flood over the processes; a flood process, its RSS when
    ready (URLs read) over the processes, split into the interpreter (the default
    figure) and the URLs it read: its share (``flood_urls_per_process``), or the whole
    file in runs from before the flood kept shares only (no such field).
    """
    found: dict[str, tuple[float, str]] = {}
    for key, figure in (("redis_kb_per_conn", "redis_kb"), ("client_kb_per_conn", "flood_kb")):
        if _positive(data.get(key)):
            found[figure] = (float(data[key]), f"{name}: {key}")
    if _positive(data.get("server_pss_before")) and _positive(data.get("server_processes")):
        found["server_process_kb"] = (data["server_pss_before"] / data["server_processes"] / 1024,
                                      f"{name}: server_pss_before / server_processes")
    if _positive(data.get("redis_rss_before")):
        found["redis_process_kb"] = (data["redis_rss_before"] / 1024, f"{name}: redis_rss_before")
    if all(_positive(data.get(k)) for k in ("client_rss_before", "client_processes",
                                            "connections_requested")):
        each = data["client_rss_before"] / data["client_processes"] / 1024
        base = min(DEFAULT_FIGURES.flood_process_kb, each)
        urls = data.get("flood_urls_per_process") or data["connections_requested"]
        found["flood_url_kb"] = ((each - base) / urls,
                                 f"{name}: client_rss_before / client_processes, less the "
                                 "interpreter, per URL a process read")
    return found


#: The before/after pairs of a flood.bench document that make up an experiment's growth.
GROWTH = ("server_pss", "redis_rss", "client_rss", "slab")


def _measured_growth(data: dict) -> tuple[float, int] | None:
    """The whole growth a flood.bench run measured (KiB) and the connections it held."""
    pairs = [(data.get(f"{k}_before"), data.get(f"{k}_after")) for k in GROWTH]
    if not _positive(data.get("held")) or not all(_positive(b) and _positive(a)
                                                  for b, a in pairs):
        return None
    return sum(a - b for b, a in pairs) / 1024, data["held"]


def load_figures(path: str | Path) -> Figures:
    """Read the figures from a benchmark's JSON, so the plan follows measurements.

    ``python -m flood.bench --json`` writes ``server_pss_kb_per_conn`` and
    ``server_kb_per_conn`` (PSS and RSS growth, for its ``transport``: ``stream`` is
    the server's ``test``), ``slab_kb_per_conn`` and ``tcp_mem_kb_per_conn``, measured on
    loopback, Redis's and the flood's growth and each process's memory before the
    flood. Also accepted (docs/tuning.rst)::

        {"server_kb_per_conn": 16.9, "kernel_kb_per_conn": 8.1, "loopback": true,
         "transports": {"test": {"server_kb_per_conn": 16.9, "kernel_kb_per_conn": 8.0}}}

    The kernel figure is growth per connection as measured; on loopback (``loopback``
    true, the default, as flood.bench runs) both ends were counted, so a socket is half.
    A figure the file lacks is the default's, and the plan says so beside it.
    """
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top")
    name = Path(path).name
    rows = dict(data.get("transports") or {})
    if "server_kb_per_conn" in data:
        transport = data.get("transport", "test")
        rows.setdefault(BENCH_TRANSPORTS.get(transport, transport), data)
    server, kernel, origin = {}, [], dict(DEFAULT_FIGURES.origin)
    for transport, row in rows.items():
        if not isinstance(row, dict) or "server_kb_per_conn" not in row:
            raise ValueError(f"{path}: transport {transport!r} has no server_kb_per_conn")
        server[transport], key = _server_kb(row, f"{path}: {transport}")
        origin["server_kb"] = f"{name}: {key}"
        if "kernel_kb_per_conn" in row or "slab_kb_per_conn" in row:
            kernel.append(_number(row.get("kernel_kb_per_conn", _bench_kernel(row)),
                                  f"{path}: {transport}.kernel_kb_per_conn"))
    if not server:
        raise ValueError(f"{path}: no server_kb_per_conn (top level or under \"transports\")")
    ends = 2 if data.get("loopback", True) else 1
    per_socket = max(kernel) / ends if kernel else DEFAULT_FIGURES.kernel_kb_per_socket
    if kernel:
        origin["kernel_kb_per_socket"] = f"{name}: kernel growth over {ends} end(s)"
    else:
        origin["kernel_kb_per_socket"] = "default: " + origin["kernel_kb_per_socket"]
    measured = _bench_processes(data, name)
    values = {figure: kb for figure, (kb, _) in measured.items()}
    for figure in ("redis_kb", "flood_kb", "server_process_kb", "redis_process_kb",
                   "flood_url_kb"):
        origin[figure] = measured[figure][1] if figure in measured \
            else "default: " + origin[figure]
    origin["flood_process_kb"] = "default: " + origin["flood_process_kb"]
    defaults = {f: getattr(DEFAULT_FIGURES, f) for f in
                ("redis_kb", "flood_kb", "server_process_kb", "redis_process_kb",
                 "flood_process_kb", "flood_url_kb")}
    return Figures(server, per_socket, **{**defaults, **values}, source=str(path), origin=origin,
                   unmeasured=tuple(t for t in TRANSPORTS if t not in server),
                   measured=_measured_growth(data))
