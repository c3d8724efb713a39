"""The console in a real browser (Debian's chromium driven by Playwright) against a real `ebbtide up --console`:
a burst rises and drains to zero on the chart, poison lands in the dead letters and is redriven after its fix
was tried in a shadow run and promoted from the page, an order is looked up, and a read-only console, a page
of another origin and a request without the page's token are refused.

The page's own data is read (the charts' arrays, every tick the page receives), never pixels. Each view is
saved as a screenshot in the test's folder (the path is printed).

Chromium comes from Debian (.ci/run installs it); Playwright never downloads a browser here. Where chromium
is missing the test skips saying so, except under CI, where it fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ebbtide.broker import free_port
from tests.components import require
from tests.conftest import REPO, manifest_copy, port_open
from tests.integration.test_otlp_export import Collector

CHROMIUM = Path("/usr/bin/chromium")
# As root in a container, without a GPU, and nothing that reaches the network by itself.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
START_S = 120.0  # bounds far above what each step takes: a slow, shared machine passes, a hang fails
STEP_S = 60.0
BURST = 3000


def browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (the test extra pins it)"
    return None


@pytest.fixture(scope="module", autouse=True)
def _browser_present() -> None:
    require(browser_missing(), "the console's browser (Debian's chromium, driven by Playwright)")


class Process:
    """`ebbtide ...` in a process group of its own, its output in a file; stopped with SIGINT (Ctrl-C)."""

    def __init__(self, folder: Path, manifest: Path, name: str, *args: str) -> None:
        self.log = folder / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EBBTIDE_")}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ebbtide", "--log-format", "text", "-m", str(manifest), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=folder,
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_port(self, port: int) -> None:
        deadline = time.monotonic() + START_S
        while not port_open(port):
            if self.process.poll() is not None:
                raise AssertionError(f"exited with {self.process.returncode}:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing on port {port} within {START_S} s:\n{self.output}")
            time.sleep(0.05)

    def stop(self) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"did not stop within 60 s of Ctrl-C:\n{self.output}") from None


class Platform:
    def __init__(self, folder: Path, collector: Collector) -> None:
        self.folder = folder
        self.manifest, self.nats_port = manifest_copy(folder)
        # Tracing on, to a collector of our own: an order's trace is found from the console.
        self.manifest.write_text(self.manifest.read_text() + f'\n[telemetry]\notlp_endpoint = "{collector.url}"\n')
        self.collector = collector
        self.console_port = free_port()
        self.up = Process(folder, self.manifest, "up", "up", "--console", str(self.console_port))
        self.url = f"http://127.0.0.1:{self.console_port}"

    def ebbtide(self, *args: str, manifest: Path | None = None) -> str:
        """A CLI command as a user types it beside the running platform; its output."""
        done = subprocess.run(
            [sys.executable, "-m", "ebbtide", "-m", str(manifest or self.manifest), *args],
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=START_S,
            env={k: v for k, v in os.environ.items() if not k.startswith("EBBTIDE_")},
        )
        assert done.returncode == 0, f"ebbtide {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def publish_lines(self, name: str, lines: list[str]) -> None:
        path = self.folder / name
        path.write_text("\n".join(lines) + "\n")
        self.ebbtide("publish", "--file", str(path))


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    collector = Collector()
    threading.Thread(target=collector.server.serve_forever, daemon=True).start()
    running = Platform(tmp_path_factory.mktemp("console"), collector)
    try:
        running.up.wait_for_port(running.console_port)
        yield running
    finally:
        collector.server.shutdown()
        code = running.up.stop()
        assert code == 0, f"`up --console` exited {code} after Ctrl-C:\n{running.up.output}"
        assert not port_open(running.console_port), "the console outlived `up`"


@pytest.fixture(scope="module")
def screens(platform: Platform) -> Path:
    folder = platform.folder / "screenshots"
    folder.mkdir()
    print(f"\nscreenshots of the console: {folder}")
    return folder


@pytest.fixture(scope="module")
def browser(platform: Platform) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(platform.folder / "chromium-profile"),  # a fresh profile, in the test's folder
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


class Page:
    """One browser tab on a console, with the checks the tests make. Waiting polls the page's own state
    (page.evaluate runs through the DevTools protocol: the console's Content-Security-Policy stays on)."""

    def __init__(self, browser: Any, url: str, view: str) -> None:
        self.page = browser.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(f"{url}/#{view}")
        self.until("window.ebbtide && ebbtide.session && ebbtide.tick", "the first tick")

    def until(self, expression: str, what: str, timeout: float = STEP_S) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.page.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout} s ({expression}); page errors: {self.errors}")
            time.sleep(0.1)

    def view(self, view: str) -> None:
        self.page.evaluate(f"location.hash = '#{view}'")
        self.until(f"!document.getElementById('view-{view}').hidden", f"view {view}")

    def text(self, selector: str) -> str:
        return str(self.page.text_content(selector) or "")

    def confirm(self, button: str, expected: str) -> None:
        self.page.click(button)
        self.page.wait_for_selector("#confirm[open]")
        assert expected in self.text("#confirm-text"), self.text("#confirm-text")
        self.page.click("#confirm-ok")

    def look_up(self, order_id: str) -> None:
        """The Orders view, as a person uses it: look again until the order has made its way to an outbox."""
        self.view("orders")
        self.page.fill("#order-key", order_id)
        deadline = time.monotonic() + STEP_S
        while True:
            self.page.click("#order-form button[type=submit]")
            self.until("document.getElementById('order-status').textContent !== 'looking…'", "an answer")
            if self.page.evaluate("document.querySelector('#order-result .order') !== null"):
                return
            assert "not in outbox-express, outbox-standard" in self.text("#order-status")
            assert time.monotonic() < deadline, f"order {order_id} never reached an outbox"
            time.sleep(0.2)

    def shot(self, folder: Path, name: str) -> None:
        self.page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
        assert not self.errors, self.errors


def test_a_burst_rises_and_drains_to_zero_on_the_chart(platform: Platform, browser: Any, screens: Path) -> None:
    page = Page(browser, platform.url, "scaling")
    page.until("ebbtide.charts.distributor && ebbtide.charts['receiver-express']", "charts")
    assert page.page.evaluate("ebbtide.session.actions") is True  # `up` has the admin credentials
    # Every tick the page receives, its largest edge rates kept (a burst may fit in one tick).
    page.page.evaluate(
        """window.peaks = {};
        ebbtide.events.addEventListener('tick', (event) => {
          const tick = JSON.parse(event.data);
          for (const [id, rate] of Object.entries({...ebbtide.edgeRates(tick), ...tick.inflow})) peaks[id] = Math.max(peaks[id] || 0, rate);
        });"""
    )
    platform.ebbtide("publish", "--count", str(BURST), "--first-id", "100000", "--seed", "7")
    for function in ("distributor", "receiver-express", "receiver-standard"):
        rose = page.until(
            f"(() => {{ const [t, backlog, instances] = ebbtide.charts['{function}'].data;"
            " return Math.max(...instances) > 0 && Math.max(...backlog) > 0; })()",
            f"instances of {function} above 0",
        )
        assert rose
    page.shot(screens, "scaling-burst")
    for function in ("distributor", "receiver-express", "receiver-standard"):
        page.until(
            f"(() => {{ const instances = ebbtide.charts['{function}'].data[2];"
            " const top = instances.lastIndexOf(Math.max(...instances));"
            " return instances[instances.length - 1] === 0 && top < instances.length - 1; })()",
            f"{function} back to 0 instances after its peak",
        )
    page.shot(screens, "scaling")
    peaks = page.page.evaluate("window.peaks")
    for edge in (
        "subject:orders.ingress",
        "subject:orders.ingress>function:distributor",
        "function:distributor>subject:orders.express",
        "function:receiver-express>bucket:outbox-express",
        "function:receiver-standard>bucket:outbox-standard",
    ):
        assert peaks.get(edge, 0) > 0, (edge, peaks)
    page.view("overview")
    page.until("document.querySelectorAll('#graph [data-node]').length === 9", "the pipeline graph")
    rows = page.page.evaluate("[...document.querySelectorAll('#functions tbody tr')].map(r => r.dataset.function)")
    assert rows == ["distributor", "receiver-express", "receiver-standard"]
    page.shot(screens, "overview")


def test_poison_is_dead_lettered_then_redriven_after_a_fix_tried_in_a_shadow_run(
    platform: Platform, browser: Any, screens: Path
) -> None:
    # A change to try: drone deliveries take the express lane (the live distributor rejects them).
    drone = {"description": "Drone order", "firstName": "Ada", "lastName": "Lovelace", "delivery": "Drone"}
    drones = [
        json.dumps(
            {
                "orderId": i,
                "orderGuid": f"00000000-0000-4000-8000-00000000{i:04d}",
                **drone,
                "items": [{"orderItemId": 1, "sku": "D", "quantity": 1}],
            }
        )
        for i in (9001, 9002)
    ]
    html = '<img src=x onerror="document.title=`pwned`"><b>not an order</b>'
    platform.publish_lines("poison.jsonl", [*drones, html])
    page = Page(browser, platform.url, "dead-letters")
    page.until("document.querySelectorAll('#dead-letters tr[data-seq]').length >= 3", "three dead letters listed")
    letters = page.page.evaluate(
        "[...document.querySelectorAll('#dead-letters tr[data-seq]')].map(r => [Number(r.dataset.seq), r.cells[3].textContent, r.cells[7].textContent])"
    )
    drone_seqs = [seq for seq, _, error in letters if "Drone" in error]
    html_seq = next(seq for seq, _, error in letters if "malformed-json" in error)
    assert len(drone_seqs) == 2 and all(reason == "rejected" for _, reason, _ in letters), letters
    # Open the one whose payload is HTML: it is shown as text, nothing of it runs or renders.
    page.page.click(f"#dead-letters tr[data-seq='{html_seq}'] td:nth-child(3)")
    page.until(f"document.getElementById('dead-detail').dataset.seq === '{html_seq}'", "the letter's detail")
    assert page.text("#dead-detail-payload") == html
    assert page.page.evaluate("document.querySelectorAll('#dead-detail img, #dead-detail b').length") == 0
    assert page.page.evaluate("document.title") == "ebbtide console"
    headers = page.page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#dead-detail-headers tr')].map(r => [r.cells[0].textContent, r.cells[1].textContent]))"
    )
    assert headers["Ebbtide-Reason"] == "rejected" and headers["Ebbtide-Original-Subject"] == "orders.ingress"
    # A confirmation answered "Cancel" does nothing.
    page.page.click("#dead-purge")
    page.page.wait_for_selector("#confirm[open]")
    page.page.click("#confirm-cancel")
    assert page.page.evaluate("document.querySelectorAll('#dead-letters tr[data-seq]').length") >= 3
    page.page.click(f"#dead-letters tr[data-seq='{drone_seqs[0]}'] td:nth-child(3)")
    page.until(f"document.getElementById('dead-detail').dataset.seq === '{drone_seqs[0]}'", "a drone letter's detail")
    assert '"delivery": "Drone"' in page.text("#dead-detail-payload")
    page.shot(screens, "dead-letters")

    # The fix, built from a copy of the distributor's source, runs as a shadow beside the live module.
    source = platform.folder / "distributor-fix"
    subprocess.run(["cp", "-r", str(REPO / "functions/distributor"), str(source)], check=True)
    main = source / "main.zig"
    fixed = main.read_text().replace(
        'kind.eqlIgnoreCase("express")', 'kind.eqlIgnoreCase("express") or kind.eqlIgnoreCase("drone")'
    )
    assert fixed != main.read_text(), "the distributor's source changed: adapt the fix"
    main.write_text(fixed)
    candidate_manifest = platform.folder / "candidate.toml"
    candidate_manifest.write_text(
        platform.manifest.read_text().replace(f'source = "{REPO / "functions/distributor"}"', f'source = "{source}"')
    )
    platform.ebbtide(
        "shadow", "start", "--function", "distributor", "--build", "--share", "100%", "--keep", "3", manifest=candidate_manifest
    )
    drone_later = drones[0].replace("9001", "9003").replace("00009001", "00009003")
    platform.publish_lines("more.jsonl", [drone_later])
    platform.ebbtide("publish", "--count", "20", "--first-id", "5000", "--seed", "3")
    page.view("rollouts")
    card = "#rollouts .rollout[data-function='distributor']"
    page.until(
        f'(() => {{ const c = document.querySelector("{card} .counts"); return c && Number(c.dataset.different) >= 1 && Number(c.dataset.same) >= 20; }})()',
        "the shadow's verdicts",
    )
    assert "shadow of" in page.text(f"{card} .record") and "active" in page.text(f"{card} .record")
    page.page.click(f"{card} [data-action='samples']")
    page.until("document.querySelector('#samples-list .sample.different')", "a kept sample that differs")
    different = "#samples-list .sample.different"
    assert "REJECT: unknown-delivery" in page.text(f"{different} .answer:first-child .line.changed")
    assert "publish orders.express" in page.text(f"{different} .answer:last-child .line.changed")
    page.shot(screens, "rollouts")

    # Promote it from the page, then send the drone orders back through it.
    page.confirm(f"{card} [data-action='promote']", "Promote the candidate")
    page.until(f"document.querySelector(\"{card} .record\").dataset.phase === 'promoted'", "the promotion")
    page.until("document.getElementById('notice').textContent.includes('promoted')", "the promotion's answer")
    page.view("dead-letters")
    page.until("document.querySelectorAll('#dead-letters tr[data-seq]').length >= 4", "the third drone's letter")
    drone_seqs = page.page.evaluate(
        "[...document.querySelectorAll('#dead-letters tr[data-seq]')].filter(r => r.cells[7].textContent.includes('Drone')).map(r => Number(r.dataset.seq))"
    )
    assert len(drone_seqs) == 3
    for seq in drone_seqs:
        page.page.check(f"#dead-letters tr[data-seq='{seq}'] input[type=checkbox]")
    page.confirm("#dead-redrive", "Send 3 dead letters back")
    page.until("document.getElementById('notice').textContent.startsWith('Redriven 3')", "the redrive")
    page.until(
        f"[...document.querySelectorAll('#dead-letters tr[data-seq]')].map(r => r.dataset.seq).join() === '{html_seq}'",
        "only the HTML letter left",
    )

    page.look_up("9003")
    assert page.page.evaluate("document.querySelector('#order-result .order').dataset.bucket") == "outbox-express"
    assert '"delivery": "Drone"' in page.text("#order-result pre")
    # Where its trace is: the id of the trace that the functions exported for it, to the collector.
    trace_id = page.page.evaluate("document.querySelector('#order-result .trace').dataset.traceId")
    deadline = time.monotonic() + STEP_S
    while trace_id not in {span.trace_id.hex() for span in platform.collector.spans()}:
        assert time.monotonic() < deadline, f"no span of trace {trace_id} reached the collector"
        time.sleep(0.2)
    page.shot(screens, "orders")

    # This test leaves the distributor as the manifest has it.
    page.view("rollouts")
    page.confirm(f"{card} [data-action='abort']", "Every replica returns to the manifest's module")
    page.until(f"document.querySelector(\"{card} .record\").dataset.phase === 'aborted'", "the abort")


def test_a_read_only_console_and_requests_from_elsewhere_are_refused(platform: Platform, browser: Any, screens: Path) -> None:
    platform.publish_lines("refused.jsonl", ['{"orderId": 7007, "delivery": "Standard"}'])  # no items: rejected
    port = free_port()
    viewer = "http://127.0.0.1:16686/trace/{trace_id}"  # only linked to, never fetched
    reader = Process(
        platform.folder,
        platform.manifest,
        "console-read-only",
        "console",
        "--read-only",
        "--port",
        str(port),
        "--trace-url",
        viewer,
    )
    try:
        reader.wait_for_port(port)
        page = Page(browser, f"http://127.0.0.1:{port}", "dead-letters")
        page.until("document.querySelector('#dead-letters tr[data-seq]')", "a dead letter")
        assert page.page.evaluate("ebbtide.session.actions") is False
        assert "Read-only: started with --read-only" in page.text("#dead-read-only")
        disabled = page.page.evaluate(
            "[...document.querySelectorAll('button.action')].every(b => b.disabled && b.title.includes('read-only'))"
        )
        assert disabled
        before = dead_letters(platform)
        assert before
        # The buttons are off; asked directly with the page's own token, the console refuses as well.
        refused = page.page.evaluate(
            """fetch('/api/dead-letters/purge', {method: 'POST', body: '{}', headers: {'Content-Type': 'application/json',
                'X-Ebbtide-CSRF': document.querySelector('meta[name=ebbtide-csrf]').content}})
               .then(async r => [r.status, (await r.json()).error])"""
        )
        assert refused[0] == 403 and "read-only (started with --read-only)" in refused[1], refused
        page.shot(screens, "read-only")
        # Reading stays open: an order, with its trace linked to the viewer given by --trace-url.
        platform.ebbtide("publish", "--count", "1", "--first-id", "7100", "--seed", "11")
        page.look_up("7100")
        link = page.page.evaluate("document.querySelector('#order-result .trace a').href")
        trace_id = page.page.evaluate("document.querySelector('#order-result .trace').dataset.traceId")
        assert link == viewer.replace("{trace_id}", trace_id) and len(trace_id) == 32, (link, trace_id)
        # From this page (another origin) to the admin console: the request is sent, and refused.
        page.page.evaluate(
            f"""fetch('{platform.url}/api/dead-letters/purge', {{method: 'POST', mode: 'no-cors', body: '{{}}',
                headers: {{'Content-Type': 'text/plain'}}}}).catch(() => null)"""
        )
        admin = Page(browser, platform.url, "dead-letters")
        without_token = admin.page.evaluate(
            """fetch('/api/dead-letters/purge', {method: 'POST', body: '{}', headers: {'Content-Type': 'application/json'}})
               .then(async r => [r.status, (await r.json()).error])"""
        )
        assert without_token[0] == 403 and "page token" in without_token[1], without_token
        assert dead_letters(platform) == before
    finally:
        assert reader.stop() == 0, reader.output


def dead_letters(platform: Platform) -> list[int]:
    """The sequences in the DLQ, as the admin console lists them (a plain HTTP client on its loopback address)."""
    with urllib.request.urlopen(f"{platform.url}/api/dead-letters", timeout=STEP_S) as response:
        return [letter["seq"] for letter in json.load(response)]


def test_a_console_reachable_from_elsewhere_needs_a_token(platform: Platform) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ebbtide", "-m", str(platform.manifest), "console", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=START_S,
        env={k: v for k, v in os.environ.items() if not k.startswith("EBBTIDE_")},
    )
    assert done.returncode == 2 and "EBBTIDE_CONSOLE_TOKEN" in done.stderr, done.stderr
