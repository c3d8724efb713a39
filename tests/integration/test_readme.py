"""The README's examples, run as a reader runs them: every fenced block, in order, in a copy of the project.

The blocks are read from README.md itself, so an edited README is what is tested. A block is run unless
the line before it says why not:

    <!-- not run by tests: REASON -->            skipped (the reason is required, and kept short)
    <!-- run in the background by tests: REASON --> started, left running for the blocks after it (as in
                                                  a second shell), then stopped with Ctrl-C (SIGINT to its
                                                  process group), which must exit 0

Block kinds: `sh` runs in bash with the venv activated (the README's "With the venv in place"), `python`
runs with the venv's Python; `text` is a diagram or a listing, never run; any other or no tag is an error,
so a new example cannot slip in untested.

Where they run: a copy of the project (its tracked files) in a temporary folder, so `.ebbtide/` and
`build/` of the checkout are never touched. Its `.venv` is the venv running the tests, seen through links,
with a setup stamp of its own so `make` finds it installed and never reinstalls into the real one. Two
substitutions, both in the text of the blocks and in the copy's ebbtide.toml: the embedded server's ports
4222/8222 become free ports (tests run side by side), and the Locust run time becomes `LOCUST_RUN_TIME`
(bounded; the README's figures come from the full run).

Commands that the README lists in tables or names in its prose (`ebbtide ...` in backticks) are not
run, but each must exist: `ebbtide COMMAND [ACTION] --help` works and names every `--option` that the README
gives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from ebbtide import cli
from ebbtide.broker import free_port
from ebbtide.workload.orders import generate_orders
from tests.conftest import REPO, port_open, wait_for_consumers

README = REPO / "README.md"
VENV = Path(sys.prefix)
LOCUST_RUN_TIME = "5s"
BLOCK_TIMEOUT_S = 300  # the slowest block is `make demo` (10,000 orders; a cold Zig build on a fresh clone)
STATUS_SETTLE_S = 30  # `shadow status` asked again until the replicas' counts include every message (see below)
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    ".ebbtide",
    "node_modules",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".hypothesis",
    ".zig-cache",
)

NOT_RUN = "not run by tests"
BACKGROUND = "run in the background by tests"
_MARKER = re.compile(rf"^<!--\s*({NOT_RUN}|{BACKGROUND}):\s*(.*?)\s*-->$")
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
RUNNABLE = ("sh", "python")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence in README.md
    lang: str
    code: str
    marker: str | None  # NOT_RUN, BACKGROUND or None (run)
    reason: str

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang})"


def readme_blocks(text: str) -> list[Block]:
    blocks = []
    for match in _FENCE.finditer(text):
        before = [line.strip() for line in text[: match.start()].splitlines() if line.strip()]
        marker = _MARKER.match(before[-1]) if before else None
        blocks.append(
            Block(
                text.count("\n", 0, match.start()) + 1,
                match[1].strip(),
                match[2],
                marker[1] if marker else None,
                marker[2] if marker else "",
            )
        )
    return blocks


def test_every_block_is_run_or_says_why_not() -> None:
    blocks = readme_blocks(README.read_text())
    assert blocks, "no fenced blocks found in README.md"
    for block in blocks:
        assert block.lang in (*RUNNABLE, "text"), (
            f"{block}: tag it sh or python (run by this test), or text (a diagram or listing)"
        )
        if block.marker is not None:
            assert block.lang in RUNNABLE, f"{block}: a text block needs no marker"
            assert block.reason, f"{block}: say why (<!-- {block.marker}: REASON -->)"
    skipped = [b for b in blocks if b.marker == NOT_RUN]
    assert len(skipped) <= 3, f"more blocks skipped than run-worthy reasons allow: {[str(b) for b in skipped]}"
    assert sum(1 for b in blocks if b.marker is None and b.lang in RUNNABLE) >= 4


# -- the copy the examples run in --


@dataclass
class Project:
    root: Path
    port: int
    monitor_port: int
    env: dict[str, str]

    def adapt(self, code: str) -> str:
        """The README's text as typed, with this copy's ports and a bounded Locust run."""
        code = re.sub(r"\b4222\b", str(self.port), code)
        code = re.sub(r"\b8222\b", str(self.monitor_port), code)
        return re.sub(r"(locust\b.*?\s-t\s+)\S+", rf"\g<1>{LOCUST_RUN_TIME}", code, flags=re.S)

    def command(self, block: Block) -> list[str]:
        code = self.adapt(block.code)
        if block.lang == "python":
            return [str(self.root / ".venv" / "bin" / "python"), "-c", code]
        return ["bash", "-c", f"set -eo pipefail\nsource .venv/bin/activate\n{code}"]


def shadow_venv(venv: Path, into: Path) -> None:
    """`into` looks like `venv` (links to its contents) but has a bin/ of its own with a fresh setup stamp."""
    into.mkdir()
    for entry in venv.iterdir():
        if entry.name != "bin":
            (into / entry.name).symlink_to(entry)
    (into / "bin").mkdir()
    for entry in (venv / "bin").iterdir():
        if entry.name != ".installed":
            (into / "bin" / entry.name).symlink_to(entry)
    (into / "bin" / ".installed").touch()  # newer than the copied pyproject.toml: `make` finds setup done


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    root = tmp_path_factory.mktemp("readme") / "ebbtide"
    shutil.copytree(REPO, root, ignore=COPY_IGNORE)
    if (REPO / "build" / "wasm").is_dir():  # a head start for the incremental build (mtimes kept), if there is one
        shutil.copytree(REPO / "build" / "wasm", root / "build" / "wasm", ignore=shutil.ignore_patterns("*.tmp.wasm"))
    shadow_venv(VENV, root / ".venv")
    project = Project(root, free_port(), free_port(), {})
    manifest = root / "ebbtide.toml"
    manifest.write_text(project.adapt(manifest.read_text()))
    assert str(project.port) in manifest.read_text(), "the manifest's embedded port is no longer 4222: adapt() must follow"
    project.env = {
        k: v for k, v in os.environ.items() if not k.startswith(("EBBTIDE_", "NATS_", "OTEL_", "VIRTUAL_ENV", "PYTHON"))
    }
    return project


@pytest.fixture(scope="module")
def background(project: Project) -> Iterator[list[tuple[Block, subprocess.Popen[str]]]]:
    started: list[tuple[Block, subprocess.Popen[str]]] = []
    yield started
    for block, process in reversed(started):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in its terminal
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            pytest.fail(f"{block} did not stop on Ctrl-C within 60 s:\n{output[-4000:]}")
        assert process.returncode == 0, f"{block} exited {process.returncode} after Ctrl-C:\n{output[-4000:]}"


def examples_time_limit() -> float:
    """Every block may take its BLOCK_TIMEOUT_S (run to its end, or a background one until it serves), and a
    second run of the Nats-Msg-Id example; plus the status re-reads and Ctrl-C of the background blocks."""
    blocks = [b for b in readme_blocks(README.read_text()) if b.lang in RUNNABLE and b.marker != NOT_RUN]
    runs = len(blocks) + sum(1 for b in blocks if "Nats-Msg-Id" in b.code)
    return runs * BLOCK_TIMEOUT_S + sum(STATUS_SETTLE_S for b in blocks if "shadow status" in b.code) + 120


@pytest.mark.timeout(examples_time_limit())
def test_examples_run_in_order(project: Project, background) -> None:
    ran = []
    for block in readme_blocks(README.read_text()):
        if block.lang not in RUNNABLE or block.marker == NOT_RUN:
            continue
        if block.marker == BACKGROUND:
            process = subprocess.Popen(
                project.command(block),
                cwd=project.root,
                env=project.env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            background.append((block, process))
            wait_until_serving(project, block, process)
            ran.append(block)
            continue
        done = run_block(project, block)
        assert done.returncode == 0, (
            f"{block} exited {done.returncode}:\n{textwrap.indent(project.adapt(block.code), '  ')}\n"
            f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
        )
        check_output(block, done.stdout + done.stderr)
        if "ebbtide shadow status" in block.code:
            check_rollout_counts(project, block, done.stdout)
        if "Nats-Msg-Id" in block.code:
            # Run as a reader reuses it: the second run is a new order for JetStream, not a silent duplicate.
            again = run_block(project, block)
            assert again.returncode == 0 and "stored in ORDERS as #" in again.stdout, again.stdout + again.stderr
            assert "duplicate" not in again.stdout, f"{block}: its second run was dropped as a duplicate"
        ran.append(block)
    assert any(b.marker == BACKGROUND for b in ran), "the README no longer says how to start ebbtide"
    assert any("locust" in b.code for b in ran), "the README's Locust command must be run"


def run_block(project: Project, block: Block) -> subprocess.CompletedProcess[str]:
    """Run a block to its end in a process group of its own: whatever it started is stopped with it."""
    process = subprocess.Popen(
        project.command(block),
        cwd=project.root,
        env=project.env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{block} still running after {BLOCK_TIMEOUT_S} s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # anything the block left running in the background
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(block.code, process.returncode, stdout, stderr)


def wait_until_serving(project: Project, block: Block, process: subprocess.Popen[str]) -> None:
    """A background block is `ebbtide up`: ready when its server answers and its functions have provisioned."""
    deadline = time.monotonic() + 60
    while not port_open(project.port):
        if process.poll() is not None or time.monotonic() > deadline:
            output = process.communicate()[0] if process.poll() is not None else "(still running)"
            pytest.fail(f"{block}: no server on port {project.port} within 60 s:\n{output[-4000:]}")
        time.sleep(0.05)

    async def provisioned() -> None:
        seed = project.root / ".ebbtide" / "nats" / "auth" / "admin.nk"
        nc = await nats.connect(f"nats://127.0.0.1:{project.port}", nkeys_seed=str(seed) if seed.exists() else None)
        try:
            await wait_for_consumers(nc)
        finally:
            await nc.close()

    asyncio.run(provisioned())


def check_output(block: Block, output: str) -> None:
    """What the README's own words promise about a block's output."""
    if "ebbtide demo" in block.code or "make demo" in block.code:
        assert "10000" in output.replace(",", ""), output[-3000:]
    if "ebbtide outbox get" in block.code:
        assert '"orderId"' in output, output
    if "ebbtide replay" in block.code and "--from-dlq" in block.code:
        # the DLQ's sequence depends on the dead letters of the examples before it
        assert re.search(r"would now handle 1 dead letter\(s\): DLQ #\d+\n", output), output
    if "locust" in block.code:
        # Locust's tables (while running and at the end): every aggregated row counts requests and 0 failures.
        rows = [line.split() for line in output.splitlines() if line.strip().startswith("Aggregated")]
        aggregated = [row for row in rows if len(row) > 2 and re.fullmatch(r"\d+\([\d.]+%\)", row[2])]  # not percentiles
        assert aggregated, output[-3000:]
        assert all(row[2] == "0(0.00%)" for row in aggregated), f"Locust reported failures:\n{output[-3000:]}"
        assert int(aggregated[-1][1]) > 0, output[-3000:]


# -- what `shadow status` counts --

_STATUS = re.compile(r"^ebbtide shadow status (\S+)\s*$", re.M)
_SHADOW_COUNTS = re.compile(r"shadow: same (\d+), different (\d+), candidate_fault (\d+)")
_CANARY_COUNTS = re.compile(r"^  canary (live|candidate): (.*)$", re.M)


def counts_of(status: str) -> tuple[tuple[int, int, int] | None, dict[str, dict[str, int]]]:
    """(same, different, candidate_fault) of a shadow run, and a canary's version -> result -> count."""
    shadow = _SHADOW_COUNTS.search(status)
    canary = {
        version: {result: int(n) for result, n in (item.rsplit(" ", 1) for item in counts.split(", "))}
        for version, counts in _CANARY_COUNTS.findall(status)
    }
    return (tuple(map(int, shadow.groups())) if shadow else None), canary  # type: ignore[return-value]


def promised_shadow_counts() -> tuple[int, int, int]:
    """What the README shows `shadow status` counting for its worked example (its text block)."""
    text_blocks = "\n".join(b.code for b in readme_blocks(README.read_text()) if b.lang == "text")
    match = _SHADOW_COUNTS.search(text_blocks)
    assert match, "the README no longer shows the shadow example's counts"
    return tuple(map(int, match.groups()))  # type: ignore[return-value]


def express_orders_published(code: str) -> int:
    """Express orders among those the block's `ebbtide publish --count N --first-id F --seed S` sent: what
    receiver-express handles, on its live module or its canary."""
    match = re.search(r"ebbtide publish --count (\d+) --first-id (\d+) --seed (\d+)", code)
    assert match, code
    count, first_id, seed = map(int, match.groups())
    return sum(1 for o in generate_orders(count, seed=seed, first_id=first_id) if o.delivery == "Express")


def check_rollout_counts(project: Project, block: Block, output: str) -> None:
    """`shadow status` sums what the replicas report when asked: every message of the example counted, as
    the README says. A message still in flight when the block asked (the block waits for the last order's
    outbox write, and another instance may still be finishing one before it) is counted a moment later:
    the status is asked again until it is, within STATUS_SETTLE_S, never beyond."""
    [function] = _STATUS.findall(block.code)
    if "canary --function" in block.code:
        express = express_orders_published(block.code)

        def settled(status: str) -> bool:
            _, canary = counts_of(status)
            return sum(sum(c.values()) for c in canary.values()) >= express

        def check(status: str) -> None:
            _, canary = counts_of(status)
            assert set(canary) <= {"live", "candidate"} and "live" in canary, status
            assert all(set(c) == {"ok"} for c in canary.values()), f"the canary example had faults:\n{status}"
            assert sum(c["ok"] for c in canary.values()) == express, f"{express} Express orders, counted:\n{status}"
    else:
        promised = promised_shadow_counts()

        def settled(status: str) -> bool:
            shadow, _ = counts_of(status)
            return shadow is not None and sum(shadow) >= sum(promised)

        def check(status: str) -> None:
            assert counts_of(status)[0] == promised, f"the README shows {promised} (same, different, candidate_fault):\n{status}"

    status, deadline = output, time.monotonic() + STATUS_SETTLE_S
    while not settled(status) and time.monotonic() < deadline:
        time.sleep(0.5)
        again = Block(block.line, "sh", f"ebbtide shadow status {function}\n", None, "")
        status = run_block(project, again).stdout
    check(status)


# -- commands named in tables and prose --

_MENTION = re.compile(r"`(ebbtide (?:[^`]+))`")


def ebbtide_mentions(text: str) -> list[str]:
    return _MENTION.findall(text)


def mentioned_command(mention: str) -> tuple[str, list[str], list[str]]:
    """(subcommand, actions, --options) of a mention such as `ebbtide dlq list\\|show SEQ [--function F]` or
    `ebbtide --manifest X nats-config --out DIR`. Actions: the bare lowercase word right after the command
    or after a `|` outside brackets (inside brackets, `|` separates an option's values)."""
    words = mention.replace("\\|", "|").replace("|", " | ").split()[1:]
    options = sorted({w.strip("[]").split("=")[0] for w in words if w.strip("[").startswith("--")})
    command, actions, depth, previous = "", [], 0, "|"
    for i, word in enumerate(words):
        bare = word.isidentifier() or re.fullmatch(r"[a-z][a-z-]*", word) is not None
        if not command:
            if not word.startswith("-") and (i == 0 or words[i - 1] not in ("--manifest", "-m")):
                command = word
        elif depth == 0 and previous in (command, "|") and bare and word.islower():
            actions.append(word)
        depth += word.count("[") - word.count("]")
        previous = word
    return command, actions, options


def test_every_command_the_readme_names_exists() -> None:
    mentions = ebbtide_mentions(README.read_text())
    assert mentions
    helps: dict[tuple[str, ...], str] = {}

    def help_text(*words: str) -> str:
        """`ebbtide WORDS --help`, through the real parser (in this process: it is only parsing)."""
        if words not in helps:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit:
                cli.main([*words, "--help"])
            assert exit.value.code == 0, f"`ebbtide {' '.join(words)} --help` failed:\n{err.getvalue()}"
            helps[words] = out.getvalue()
        return helps[words]

    for mention in mentions:
        command, actions, options = mentioned_command(mention)
        assert command, f"`{mention}`: no command"
        text = help_text() + help_text(command) + "".join(help_text(command, action) for action in actions)
        missing = [o for o in options if o not in text]
        assert not missing, f"`{mention}`: `ebbtide {command}` has no {missing}"


def test_mentions_are_read_as_a_reader_reads_them() -> None:
    assert mentioned_command("ebbtide dlq list\\|show SEQ\\|redrive [SEQ...]\\|purge --yes [--function F]") == (
        "dlq",
        ["list", "show", "redrive", "purge"],
        ["--function", "--yes"],
    )
    assert mentioned_command("ebbtide --manifest deploy/kubernetes/ebbtide.toml nats-config --out deploy/kubernetes/auth") == (
        "nats-config",
        [],
        ["--manifest", "--out"],
    )
    assert mentioned_command("ebbtide bench [--quick] [--scenario host\\|memory] [--rate 50%\\|4000]") == (
        "bench",
        [],
        ["--quick", "--rate", "--scenario"],
    )
    assert mentioned_command("ebbtide new NAME [--lang zig\\|c]") == ("new", [], ["--lang"])
