"""Where the memory of a connection goes: processes (RSS, PSS) and the kernel (slab, sockstat).

docs/design.rst, "How memory per connection is measured", is the method; this module only
reads the numbers (psutil for processes, /proc for the kernel) so bench can take
them before and after a flood. On loopback both ends of every connection are in
the kernel figures, and the machine is shared: other work moves them too.
"""

from __future__ import annotations

import psutil

from comet.hostlimits import ehash_buckets, kib_fields

PAGE = 4096


def process_tree(pids: list[int]) -> list[psutil.Process]:
    """The given processes and all their children (server workers), alive ones only."""
    seen: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            seen[pid] = proc
            for child in proc.children(recursive=True):
                seen[child.pid] = child
        except psutil.NoSuchProcess:
            continue
    return list(seen.values())


def process_memory(pids: list[int], pss: bool = True) -> dict:
    """Summed RSS and (when asked, it reads smaps so it is slower) PSS, in bytes.

    ``by_process`` keeps each process's own figures (given pids first, then their
    children): a master and its workers share pages copy-on-write, so only the PSS
    sum is the server's memory; the parts say which process grew. ``pss_anon_bytes``
    is the PSS of anonymous pages alone (heap, stacks): PSS also splits file pages
    (the Python binary, shared libraries) with every other process mapping them, so a
    flood process starting lowers the server's PSS without the server doing anything;
    the anonymous share moves only with what the server allocates.
    """
    rss = pss_total = 0
    anon: int | None = 0
    procs = process_tree(pids)
    parts = []
    for proc in procs:
        try:
            if pss:
                info = proc.memory_full_info()
                own_anon = pss_anon(proc.pid)
                pss_total += info.pss
                rss += info.rss
                anon = None if anon is None or own_anon is None else anon + own_anon
                parts.append({"pid": proc.pid, "rss_bytes": info.rss, "pss_bytes": info.pss,
                              "pss_anon_bytes": own_anon})
            else:
                rss += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return {"rss_bytes": rss, "pss_bytes": pss_total if pss else None,
            "pss_anon_bytes": anon if pss else None, "processes": len(procs),
            "by_process": parts if pss else None}


def _kb_fields(path: str, *names: str) -> dict[str, int]:
    """``Name:   N kB`` lines of a /proc file (smaps_rollup, meminfo), in bytes, by name."""
    return {name: kib * 1024 for name, kib in kib_fields(path, *names).items()}


def pss_anon(pid: int) -> int | None:
    """``Pss_Anon`` of /proc/PID/smaps_rollup in bytes; None where the kernel has none
    (before Linux 5.7) or the process is gone."""
    try:
        return _kb_fields(f"/proc/{pid}/smaps_rollup", "Pss_Anon").get("Pss_Anon")
    except OSError:
        return None


def pss_sum(pids: list[int]) -> int:
    """The PSS of these processes together, in bytes, straight from /proc/PID/smaps_rollup.

    The kernel sums each process's mappings into one short file: reading it is what
    costs (it walks the page tables), about 0.6 ms a process here, 34 ms for a master and
    56 idle workers; psutil's ``memory_full_info`` costs the same and more around it.
    A process gone meanwhile counts nothing.
    """
    total = 0
    for pid in pids:
        try:
            total += _kb_fields(f"/proc/{pid}/smaps_rollup", "Pss").get("Pss", 0)
        except OSError:
            continue
    return total


def meminfo() -> dict[str, int]:
    """``Slab``, ``MemAvailable`` and what :func:`used` needs of /proc/meminfo, in bytes
    (one read, cheap)."""
    return _kb_fields("/proc/meminfo", "Slab", "MemAvailable", "MemTotal", "MemFree",
                      "Buffers", "Cached")


def used(info: dict[str, int]) -> int | None:
    """Memory in use but for the page cache: MemTotal - MemFree - Buffers - Cached.

    Every process's pages and all of the kernel's slab. ``MemAvailable`` is the
    kernel's guess at what could be had, and it counts about half of the
    reclaimable slab as free; but a socket's dentry and inode (reclaimable slab)
    cannot go while the socket is open, so at a million connections MemAvailable
    falls gigabytes less than the memory the connections hold.
    """
    try:
        return info["MemTotal"] - info["MemFree"] - info["Buffers"] - info["Cached"]
    except KeyError:
        return None


def slab_bytes() -> int:
    """``Slab:`` of /proc/meminfo: kernel objects, about 5 KB of them per TCP socket here."""
    return meminfo().get("Slab", 0)


def sockstat() -> dict:
    """TCP line of /proc/net/sockstat: sockets in use, orphans, time-wait, alloc, mem pages."""
    with open("/proc/net/sockstat") as fh:
        for line in fh:
            if line.startswith("TCP:"):
                fields = line.split()[1:]
                return {fields[i]: int(fields[i + 1]) for i in range(0, len(fields) - 1, 2)}
    return {}


def tcp_buffers() -> dict:
    """tcp_rmem / tcp_wmem / tcp_mem as the kernel has them now, and the established
    hash's buckets (None before Linux 6.1): the report names them."""
    out: dict = {}
    for name in ("tcp_rmem", "tcp_wmem", "tcp_mem"):
        try:
            with open(f"/proc/sys/net/ipv4/{name}") as fh:
                out[name] = fh.read().split()
        except OSError:
            out[name] = None
    out["ehash_buckets"] = ehash_buckets()
    return out


#: The kernel's TCP counters that say why connections were slow or lost: an accept
#: queue full (the SYN or the handshake's last ACK dropped), SYNs sent again, timeouts.
TCP_COUNTERS = {"TcpExt": ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "TCPTimeouts",
                           "TCPAbortOnTimeout", "TCPReqQFullDrop", "TCPBacklogDrop"),
                "Tcp": ("AttemptFails", "EstabResets", "RetransSegs")}


def tcp_counters() -> dict[str, int]:
    """:data:`TCP_COUNTERS` from /proc/net/netstat and /proc/net/snmp (machine-wide)."""
    found: dict[str, int] = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        try:
            with open(path) as fh:
                lines = fh.read().splitlines()
        except OSError:
            continue
        for names, values in zip(lines[::2], lines[1::2], strict=False):
            group, _, heads = names.partition(":")
            wanted = TCP_COUNTERS.get(group, ())
            for name, value in zip(heads.split(), values.partition(":")[2].split(),
                                   strict=False):
                if name in wanted:
                    found[name] = int(value)
    return found


def kernel() -> dict:
    """Slab, socket memory and TCP counters now, for a before/after difference."""
    tcp = sockstat()
    return {"slab_bytes": slab_bytes(), "tcp_inuse": tcp.get("inuse"),
            "tcp_mem_pages": tcp.get("mem"), "tcp_tw": tcp.get("tw"),
            "tcp_counters": tcp_counters()}
