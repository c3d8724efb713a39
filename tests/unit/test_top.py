import msgspec
import pytest

from ebbtide.status_reports import PoolStatus
from ebbtide.top import TopView

NOW = 1_700_000_100.0


def report(function: str, host: str, age: float, **fields: float) -> PoolStatus:
    values = dict(
        backlog=0,
        instances=0,
        in_flight=0,
        processed=0,
        dead_lettered=0,
        retried=0,
        guest_faults=0,
        rate=0.0,
        handle_p50_us=0.0,
        handle_p99_us=0.0,
    )
    values.update(fields)
    return PoolStatus(function=function, host_id=host, time=NOW - age, **values)


def table(text: str) -> dict[str, dict[str, str]]:
    """Rows by function, cells by column header (no cell holds a space)."""
    lines = text.splitlines()
    headers = lines[1].replace("P50 ms", "P50_ms").replace("P99 ms", "P99_ms").split()
    return {line.split()[0]: dict(zip(headers, line.split(), strict=True)) for line in lines[2:]}


def test_processes_of_one_function_are_added_up() -> None:
    view = TopView()
    view.update(
        report(
            "receiver",
            "a:1",
            2.0,
            backlog=1500,
            instances=2,
            in_flight=2,
            rate=300.0,
            processed=1000,
            dead_lettered=1,
            handle_p50_us=100.0,
            handle_p99_us=2000.0,
        )
    )
    view.update(
        report(
            "receiver",
            "b:2",
            0.5,
            backlog=1200,
            instances=6,
            in_flight=5,
            rate=700.5,
            processed=2500,
            dead_lettered=2,
            handle_p50_us=300.0,
            handle_p99_us=900.0,
        )
    )
    row = table(view.render(NOW))["receiver"]
    assert row["BACKLOG"] == "1,200"  # newest report's lag, not a sum
    assert (row["INSTANCES"], row["IN-FLIGHT"], row["MSG/S"]) == ("8", "7", "1,000.5")
    assert (row["PROCESSED"], row["DEAD"], row["PROCS"], row["AGE"]) == ("3,500", "-", "2", "0.5s")  # DLQ not read yet
    assert row["P99_ms"] == "2.00"  # max over processes
    assert row["P50_ms"] == "0.250"  # (100 * 2 + 300 * 6) / 8 µs


def test_oldest_is_the_oldest_pending_message_seen_by_any_process() -> None:
    """Every process reports the whole function's age; one asleep at zero reads its lag seldom, so the max
    counts (a stuck message shows if any process sees it)."""
    view = TopView()
    view.update(report("receiver", "a:1", 1.0, backlog=3, oldest_pending_s=125.0))
    view.update(report("receiver", "b:2", 0.5, backlog=3, oldest_pending_s=0.0))
    view.update(report("distributor", "a:1", 1.0))
    rows = table(view.render(NOW, width=200))
    assert (rows["receiver"]["OLDEST"], rows["distributor"]["OLDEST"]) == ("2m", "-")


def test_a_report_of_an_earlier_version_still_decodes() -> None:
    """Status reports travel between processes of different versions (a rolling upgrade): a field added later
    has a default."""
    from ebbtide.status_reports import decode_status, encode_status

    current = report("receiver", "a:1", 1.0, backlog=4, oldest_pending_s=7.5)
    earlier = msgspec.json.decode(encode_status(current))
    del earlier["oldest_pending_s"]
    decoded = decode_status(msgspec.json.encode(earlier))
    assert decoded.oldest_pending_s == 0.0 and decoded.backlog == 4


def test_dead_is_what_the_dead_letter_stream_holds_now() -> None:
    """Not the processes' running totals: letters purged or redriven since no longer count (issue 13, item 6)."""
    view = TopView(stale_after=10.0)
    view.update(report("receiver", "a:1", 1.0, dead_lettered=5))  # dead-lettered 5 since it started
    view.update(report("distributor", "a:1", 1.0, dead_lettered=2))
    view.update(report("gone", "a:1", 30.0, dead_lettered=1))  # stale: its letters are still in the stream
    view.dead_letters = {"receiver": 1, "gone": 1, "removed-function": 7}  # 4 of receiver's were purged
    text = view.render(NOW, width=200)
    rows = table(text)
    assert (rows["receiver"]["DEAD"], rows["distributor"]["DEAD"], rows["gone"]["DEAD"]) == ("1", "0", "1")
    assert "dead 9" in text.splitlines()[0]  # everything the stream holds


def test_stale_process_stops_counting_and_all_stale_shows_stale() -> None:
    view = TopView(stale_after=10.0)
    view.update(report("receiver", "a:1", 1.0, backlog=50, instances=2))
    view.update(report("receiver", "b:2", 12.0, backlog=80, instances=5))  # died
    view.update(report("distributor", "a:1", 30.0, backlog=9, instances=1))
    text = view.render(NOW)
    rows = table(text)
    assert (rows["receiver"]["INSTANCES"], rows["receiver"]["PROCS"], rows["receiver"]["BACKLOG"]) == ("2", "1", "50")
    assert rows["distributor"]["BACKLOG"] == "stale"
    assert rows["distributor"]["INSTANCES"] == "-" and rows["distributor"]["PROCS"] == "0"
    assert rows["distributor"]["AGE"] == "30s"
    header = text.splitlines()[0]
    assert "2 functions (1 stale)" in header and "backlog 50" in header and "instances 2" in header


def test_rows_sorted_and_newest_report_per_process_wins() -> None:
    view = TopView()
    view.update(report("zeta", "a:1", 1.0, instances=3))
    view.update(report("zeta", "a:1", 2.0, instances=9))  # older, delivered late
    view.update(report("alpha", "a:1", 1.0))
    rows = table(view.render(NOW))
    assert list(rows) == ["alpha", "zeta"]
    assert rows["zeta"]["INSTANCES"] == "3"
    assert rows["alpha"]["P50_ms"] == "-" and rows["alpha"]["P99_ms"] == "-"  # idle: no calls measured


@pytest.mark.parametrize("width", [30, 60, 80, 100, 140])
def test_every_line_fits_the_width(width: int) -> None:
    view = TopView()
    view.update(report("receiver-with-a-very-long-function-name", "a:1", 1.0, processed=123_456_789_012, rate=98765.4))
    view.update(report("distributor", "a:1", 1.0, backlog=10_000, instances=4))
    lines = view.render(NOW, width).splitlines()
    assert all(len(line) <= width for line in lines)
    assert lines[1].startswith("FUNCTION") and "BACKLOG" in lines[1] and "INSTANCES" in lines[1]
    assert any(line.startswith("distributor") for line in lines)


def test_wide_view_has_all_columns_and_squeezes_big_numbers() -> None:
    view = TopView()
    view.update(report("receiver-with-a-very-long-function-name", "a:1", 1.0, processed=123_456_789))
    lines = view.render(NOW, 110).splitlines()
    for column in (
        "FUNCTION",
        "BACKLOG",
        "OLDEST",
        "INSTANCES",
        "IN-FLIGHT",
        "MSG/S",
        "P50 ms",
        "P99 ms",
        "PROCESSED",
        "DEAD",
        "PROCS",
        "AGE",
    ):
        assert column in lines[1]
    assert "123.5M" in lines[2] and "…" in lines[2]


def test_empty_view() -> None:
    text = TopView().render(NOW, 80)
    assert "0 functions" in text.splitlines()[0] and "no status reports yet" in text
