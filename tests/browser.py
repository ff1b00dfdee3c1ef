"""Drive a headless Chromium through the DevTools protocol, just enough for the page tests.

:class:`Chromium` starts the browser on ``--remote-debugging-port=0`` with a
throw-away profile, reads the port it chose from ``DevToolsActivePort`` (so no
port is guessed) and kills its whole process group on :meth:`Chromium.stop`.
:class:`Page` speaks CDP over ``websocket-client`` to one tab: navigate, and
evaluate an expression until its value satisfies a predicate (a wait with a
deadline, never a timing assertion).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import websocket

#: flags that keep a test browser quiet, local and free of first-run work
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


class Page:
    """One tab, spoken to over its DevTools WebSocket."""

    def __init__(self, ws_url: str, timeout: float = 10.0) -> None:
        # DevTools refuses connections that carry an Origin header it does not allow.
        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self._next_id = 0

    def call(self, method: str, **params: Any) -> dict:
        """Send one command and return its result; events that arrive meanwhile are dropped."""
        self._next_id += 1
        self.ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            answer = json.loads(self.ws.recv())
            if answer.get("id") != self._next_id:
                continue
            if "error" in answer:
                raise RuntimeError(f"{method} failed: {answer['error']}")
            return answer["result"]

    def navigate(self, url: str) -> None:
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise RuntimeError(f"navigation to {url} failed: {result['errorText']}")

    def evaluate_json(self, expression: str) -> Any:
        """``JSON.stringify(expression)`` parsed back; None while it is undefined."""
        result = self.call("Runtime.evaluate", expression=f"JSON.stringify({expression})",
                           returnByValue=True)
        if "exceptionDetails" in result:
            return None
        value = result["result"].get("value")
        return None if value is None else json.loads(value)

    def wait_for(self, expression: str, predicate: Callable[[Any], bool],
                 timeout: float = 15.0, what: str = "condition") -> Any:
        """Poll ``expression`` until ``predicate`` holds on its value; returns that value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate_json(expression)
            if value is not None and predicate(value):
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} never held; last {expression}: {value}")
            time.sleep(0.05)

    def viewport(self, width: int, height: int) -> None:
        """Lay the page out at ``width`` x ``height`` CSS pixels (before navigating)."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def screenshot(self, path: Path) -> bytes:
        """A PNG of what the page shows now, also written to ``path``."""
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(png)
        return png

    def close(self) -> None:
        self.ws.close()


class Chromium:
    """One headless Chromium process (and its children), with a profile of its own."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.profile = Path(tempfile.mkdtemp(prefix="comet-chromium-"))
        self.log_path = self.profile.with_suffix(".log")
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.pages: list[Page] = []

    def start(self, timeout: float = 20.0) -> Chromium:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [self.executable, *FLAGS, f"--user-data-dir={self.profile}",
                 "--remote-debugging-port=0", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            self.port = self._devtools_port(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _devtools_port(self, timeout: float) -> int:
        """The port Chromium chose; it writes "<port>\\n<browser path>" once it listens."""
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while True:
            lines = active.read_text().splitlines() if active.exists() else []
            if len(lines) >= 2 and lines[0].isdigit():
                return int(lines[0])
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"chromium wrote no DevToolsActivePort:\n{self.log()}")
            time.sleep(0.05)

    def page(self, timeout: float = 10.0) -> Page:
        """The tab Chromium opened at start."""
        deadline = time.monotonic() + timeout
        while True:
            targets = requests.get(f"http://127.0.0.1:{self.port}/json", timeout=5).json()
            tabs = [t for t in targets if t.get("type") == "page" and "webSocketDebuggerUrl" in t]
            if tabs:
                page = Page(tabs[0]["webSocketDebuggerUrl"])
                self.pages.append(page)
                return page
            if time.monotonic() > deadline:
                raise RuntimeError(f"chromium shows no page target: {targets}")
            time.sleep(0.05)

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """Kill the browser and every process it started, then remove the profile."""
        for page in self.pages:
            try:
                page.close()
            except OSError:
                pass
        if self.proc is not None:
            # The group outlives its leader while a child lives; kill it either way.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)
