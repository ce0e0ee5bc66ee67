"""Offline checks of the built course website and slide decks.

    python scripts/check_site.py [SITE_DIR]            # links, then pages in headless Chromium

1. ``check_links(site_dir)``: every ``href``/``src`` of every HTML page that points to a local
   file must exist, and every ``#anchor`` must be an ``id`` (or ``name``) in the target page.
   External URLs are not fetched (there is no network); they are only counted, and pages must
   not *load* anything from outside (scripts, styles, images, fonts): that is checked in step 2.
2. ``check_page(url)``: Debian's ``chromium --headless`` opens the page, driven over the DevTools
   protocol (websocket-client). The page must finish loading, every ``<img>`` must have decoded
   (``naturalWidth > 0``), MathJax (where the page has maths) must have typeset without errors,
   the console must show no errors or uncaught exceptions, and no request may leave ``file://``
   or ``data:``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = (
    "headless Chromium is needed for the site checks: on Debian/Ubuntu "
    "`sudo apt-get update && sudo apt-get install -y chromium` (.ci/run does this), "
    "or set KD_CHROMIUM to a Chromium/Chrome binary"
)


# ---------------------------------------------------------------------------------------------
# 1. internal links


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []  # (attribute, value)
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value is None:
                continue
            if name in ("id",) or (name == "name" and tag == "a"):
                self.ids.add(value)
            if (name == "href" and tag in ("a", "link", "area")) or (
                name == "src" and tag in ("img", "script", "iframe", "source", "video", "audio")
            ):
                self.links.append((name, value))


def _parse(path: Path) -> _Collector:
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8", errors="replace"))
    return collector


@dataclass
class LinkReport:
    pages: int = 0
    internal: int = 0
    external: int = 0
    problems: list[str] = field(default_factory=list)


def check_links(site_dir: Path) -> LinkReport:
    site_dir = site_dir.resolve()
    report = LinkReport()
    parsed: dict[Path, _Collector] = {}

    def page(path: Path) -> _Collector:
        if path not in parsed:
            parsed[path] = _parse(path)
        return parsed[path]

    for html_file in sorted(site_dir.rglob("*.html")):
        report.pages += 1
        rel_page = html_file.relative_to(site_dir)
        for attr, value in page(html_file).links:
            value = value.strip()
            parts = urlsplit(value)
            if parts.scheme in ("http", "https", "mailto", "javascript", "tel") or value.startswith("//"):
                report.external += 1
                continue
            if parts.scheme == "data" or not value:
                continue
            if parts.scheme:
                report.problems.append(f"{rel_page}: {attr}={value!r}: unexpected scheme {parts.scheme!r}")
                continue
            report.internal += 1
            target = html_file if not parts.path else (html_file.parent / unquote(parts.path))
            target = Path(os.path.normpath(target))
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                report.problems.append(f"{rel_page}: {attr}={value!r}: no such file")
                continue
            if site_dir not in target.parents and target != site_dir:
                report.problems.append(f"{rel_page}: {attr}={value!r}: points outside the site")
                continue
            anchor = unquote(parts.fragment)
            if anchor and target.suffix == ".html" and anchor not in page(target).ids:
                report.problems.append(f"{rel_page}: {attr}={value!r}: no id {anchor!r} in {target.name}")
    return report


# ---------------------------------------------------------------------------------------------
# 2. headless Chromium over the DevTools protocol


def find_chromium() -> str:
    env = os.environ.get("KD_CHROMIUM")
    if env:
        if shutil.which(env) is None and not Path(env).is_file():
            raise FileNotFoundError(f"KD_CHROMIUM={env!r} does not exist; {INSTALL_HINT}")
        return env
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(f"no Chromium found ({', '.join(CHROMIUM_NAMES)}); {INSTALL_HINT}")


@dataclass
class PageReport:
    url: str
    title: str = ""
    images: list[dict] = field(default_factory=list)  # src (shortened), complete, naturalWidth
    math_elements: int = 0
    math_errors: int = 0
    console_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    text_length: int = 0

    @property
    def broken_images(self) -> list[str]:
        return [i["src"] for i in self.images if not (i["complete"] and i["naturalWidth"] > 0)]

    def problems(self) -> list[str]:
        out = [f"image did not load: {src}" for src in self.broken_images]
        out += [f"console: {m}" for m in self.console_errors]
        out += [f"request left the machine: {u}" for u in self.external_requests]
        out += [f"request failed: {u}" for u in self.failed_requests]
        if self.math_errors:
            out.append(f"{self.math_errors} MathJax error(s)")
        return out


class Browser:
    """One headless Chromium, one tab, driven over the DevTools websocket."""

    def __init__(self, binary: str | None = None, timeout: float = 60.0):
        import websocket  # websocket-client, in the dev extra

        self._websocket = websocket
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="kd-chromium-")
        cmd = [
            binary or find_chromium(),
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--allow-file-access-from-files",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            "--window-size=1280,800",
            "about:blank",
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"chromium exited with {self.proc.returncode}: {err[-2000:]}")
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = port_file.read_text().splitlines()[0].strip()
        browser_ws = f"ws://127.0.0.1:{port}{port_file.read_text().splitlines()[1].strip()}"
        self.ws = websocket.create_connection(browser_ws, timeout=timeout, suppress_origin=True)
        self._id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)

    def call(self, method: str, session: bool = False, **params):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)
        raise TimeoutError(f"{method}: no answer in {self.timeout} s")

    def evaluate(self, expression: str, await_promise: bool = False):
        result = self.call(
            "Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=await_promise
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]!r}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def _drain(self, seconds: float) -> None:
        self.ws.settimeout(0.1)
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                try:
                    self.events.append(json.loads(self.ws.recv()))
                except self._websocket.WebSocketTimeoutException:
                    continue
        finally:
            self.ws.settimeout(self.timeout)

    def check_page(self, url: str, settle: float = 0.5) -> PageReport:
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: the load event never fired")
            self._drain(0.2)
        # MathJax 3 typesets after load; wait for it where the page has it
        self.evaluate(
            "(window.MathJax && MathJax.startup && MathJax.startup.promise) ? "
            "MathJax.startup.promise.then(() => true) : Promise.resolve(false)",
            await_promise=True,
        )
        self.evaluate(
            "Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))", await_promise=True
        )
        self._drain(settle)
        report = PageReport(url=url)
        report.title = self.evaluate("document.title")
        report.images = self.evaluate(
            "Array.from(document.images).map(i => ({src: i.currentSrc.slice(0, 120), "
            "complete: i.complete, naturalWidth: i.naturalWidth}))"
        )
        report.math_elements = self.evaluate("document.querySelectorAll('mjx-container').length")
        report.math_errors = self.evaluate("document.querySelectorAll('mjx-merror, [data-mjx-error]').length")
        report.text_length = self.evaluate("document.body.innerText.length")
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                report.console_errors.append(args[:300])
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                text = details.get("exception", {}).get("description") or details.get("text")
                report.console_errors.append(f"uncaught: {str(text)[:300]}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                text = f"{entry.get('source')}: {entry.get('text', '')[:300]} {entry.get('url', '')}"
                report.console_errors.append(text)
            elif method == "Network.requestWillBeSent":
                request_url = params.get("request", {}).get("url", "")
                if not request_url.startswith(("file:", "data:", "about:", "blob:")):
                    report.external_requests.append(request_url[:200])
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                report.failed_requests.append(f"{params.get('errorText')} ({params.get('requestId')})")
        return report

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self.proc.stderr:
                self.proc.stderr.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    site = Path(argv[0] if argv else "_build/site").resolve()
    links = check_links(site)
    print(f"{links.pages} pages, {links.internal} internal links/sources, {links.external} external (not fetched)")
    for problem in links.problems:
        print(f"  BROKEN {problem}")
    pages = [site / "index.html", site / "notebooks" / "07_evaluate_and_compress.html",
             site / "slides" / "part1_foundations.html"]
    failed = bool(links.problems)
    with Browser() as browser:
        for path in pages:
            report = browser.check_page(path.as_uri())
            problems = report.problems()
            failed |= bool(problems)
            print(f"{path.relative_to(site)}: {report.title!r}, {len(report.images)} images, "
                  f"{report.math_elements} formulas, {'OK' if not problems else 'PROBLEMS'}")
            for problem in problems:
                print(f"  {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
