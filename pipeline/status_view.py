"""status.py's two pictures of a Report: a terminal calendar, and one self-contained HTML page.

Both show each project's days by 24 hours, one mark per hour, then the mismatches. The marks
are plain characters, so the calendar reads the same without colour (cron mail, a pipe,
NO_COLOR); on a terminal they are also coloured. The page has no script, font or image to
fetch: it opens without a network.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable
from datetime import UTC
from pathlib import Path

from pipeline.durable import write_atomic
from pipeline.errors import PipelineError
from pipeline.hours import default_end, format_hour
from pipeline.status import HourStatus, Project, Report, State

MARKS = {
    State.COMPLETE: "#",
    State.PARTIAL: "~",
    State.MISSING: "x",
    State.FILLING: ".",
    State.NO_DATA: "-",
    State.OUTSIDE: " ",
}
_ANSI = {
    State.COMPLETE: "32",
    State.PARTIAL: "33",
    State.MISSING: "1;31",
    State.FILLING: "2",
    State.NO_DATA: "90",
    State.OUTSIDE: "0",
}
COLOURS = {  # the page's heatmap
    State.COMPLETE: "#2e9e44",
    State.PARTIAL: "#e3a21a",
    State.MISSING: "#d23c3c",
    State.FILLING: "#c9d3de",
    State.NO_DATA: "#eceff3",
    State.OUTSIDE: "#f7f8fa",
}
STAGES = (  # (label, HourFacts.total's stage)
    ("extracted", "extracted"),
    ("in json_data/", "local_events"),
    ("in S3", "s3_events"),
    ("loaded", "loaded"),
)
MAX_LINES = 40  # mismatches printed; the page lists them all
_HEADER = "0      6      12     18"


def legend() -> str:
    marks = "  ".join(f"{MARKS[s]} {s.value}" for s in State if s is not State.OUTSIDE)
    return f"{marks}  (blank: before the project's first fetch, or outside the range)"


def days(hours: list[HourStatus]) -> dict[str, list[HourStatus]]:
    by_day: dict[str, list[HourStatus]] = {}
    for h in hours:
        by_day.setdefault(h.start.strftime("%Y-%m-%d"), []).append(h)
    return by_day


def totals(hours: Iterable[HourStatus], snowflake: bool) -> dict[str, int | None]:
    """Events per stage over the hours (None: unknown), and rows in events."""
    hours = list(hours)
    result: dict[str, int | None] = {}
    for label, stage in STAGES:
        if stage == "loaded" and not snowflake:
            continue
        each = [h.facts.total(stage) for h in hours]
        result[label] = None if None in each else sum(t or 0 for t in each)
    if snowflake:
        result["in events"] = sum(h.facts.rows for h in hours)
    return result


def file_counts(hours: Iterable[HourStatus]) -> dict[str, int]:
    hours = list(hours)
    return {
        "files in json_data/": sum(h.facts.local_files for h in hours),
        "objects in S3": sum(h.facts.objects for h in hours),
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("h") else "s")


def _numbers(values: dict[str, int | None]) -> str:
    return ", ".join(f"{'?' if v is None else v} {k}" for k, v in values.items())


def _state_counts(hours: Iterable[HourStatus]) -> str:
    counts = Counter(h.state for h in hours)
    return ", ".join(f"{counts[s]} {s.value}" for s in State if counts[s])


def all_well(report: Report) -> str:
    if report.snowflake:
        return "every finished hour is complete and reconciled"
    return "every finished hour is complete in S3 (Snowflake not checked)"


def failure(report: Report) -> str:
    """status.py's `error:` line when something is not there."""
    found = report.mismatches
    hours = len({(m.project, m.hour) for m in found})
    return (
        f"{_plural(len(found), 'mismatch')} in {_plural(hours, 'finished hour')} (listed above, "
        "each with the command that repairs it): not everything is there yet"
    )


def heading(report: Report) -> str:
    checked = "checked" if report.snowflake else "not checked (SNOWFLAKE_ACCOUNT is not set)"
    finished = default_end(report.now)
    filling = (
        f" (after {format_hour(finished)}: not finished yet)" if report.last > finished else ""
    )
    return (
        f"{format_hour(report.first)}..{format_hour(report.last)} UTC{filling}, at "
        f"{report.now.astimezone(UTC):%Y-%m-%dT%H:%MZ}; Snowflake {checked}"
    )


# --- terminal ----------------------------------------------------------------------------------


def terminal(report: Report, colour: bool = False) -> list[str]:
    """The calendar of every project, the totals line, then the mismatch list."""
    lines = [f"status {heading(report)}", f"legend: {legend()}"]
    for note in report.notes:
        lines.append(f"note: {note}")
    for project in report.projects:
        lines += ["", *_calendar(project, report.hours[project.id], report.snowflake, colour)]
    every = [h for p in report.projects for h in report.hours[p.id]]
    lines += [
        "",
        f"total: {len(every)} hours of {_plural(len(report.projects), 'project')}: "
        f"{_state_counts(every) or 'none'}; events: {_numbers(totals(every, report.snowflake))}",
    ]
    found = report.mismatches
    if not found:
        lines.append(f"no mismatch: {all_well(report)}")
        return lines
    lines.append(f"mismatches ({len(found)}):")
    lines += [f"  {m.line()}" for m in found[:MAX_LINES]]
    if len(found) > MAX_LINES:
        lines.append(f"  ... and {len(found) - MAX_LINES} more (--html PATH lists them all)")
    return lines


def _calendar(project: Project, hours: list[HourStatus], snowflake: bool, colour: bool):
    yield f"project {project.label}"
    yield f"  {'':10}  {_HEADER}"
    for day, in_day in days(hours).items():
        by_hour = {h.start.hour: h for h in in_day}
        marks = [_mark(by_hour.get(n), colour) for n in range(24)]
        row = " ".join("".join(marks[i : i + 6]) for i in range(0, 24, 6))
        judged = [h for h in in_day if h.state is not State.OUTSIDE]
        yield f"  {day}  {row}  {_numbers(totals(judged, snowflake)) if judged else ''}".rstrip()
    yield f"  hours: {_state_counts(hours) or 'none'}"


def _mark(hour: HourStatus | None, colour: bool) -> str:
    if hour is None:
        return " "
    mark = MARKS[hour.state]
    return f"\x1b[{_ANSI[hour.state]}m{mark}\x1b[0m" if colour else mark


# --- HTML --------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #1d2330; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { padding: 2px 6px; text-align: right; }
th { font-weight: 600; }
.heatmap td { width: 18px; height: 18px; padding: 0; border: 2px solid #fff;
  text-align: center; font: 11px monospace; color: rgba(0, 0, 0, 0.45); }
.heatmap td.out { background: transparent; }
.days td, .days th, .mismatches td, .mismatches th { border-bottom: 1px solid #e3e7ee; }
.mismatches td { text-align: left; vertical-align: top; }
code { font-size: 12px; }
.legend span { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; }
.ok { color: #2e9e44; } .bad { color: #d23c3c; }
"""


def page(report: Report) -> str:
    """One self-contained HTML page: heatmap and per-day table per project, the mismatches."""
    e = html.escape
    css = _CSS + "".join(f".{_css_class(s)} {{ background: {COLOURS[s]}; }}\n" for s in State)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Amplitude pipeline status</title>",
        f"<style>{css}</style></head><body>",
        "<h1>Is everything there?</h1>",
        f'<p class="summary">{e(heading(report))}</p>',
        '<p class="legend">'
        + "".join(f'<span class="{_css_class(s)}"></span>{e(s.value)}' for s in State)
        + "</p>",
        *(f'<p class="note">{e(n)}</p>' for n in report.notes),
    ]
    for project in report.projects:
        parts += _project_html(project, report.hours[project.id], report.snowflake)
    parts += _mismatches_html(report)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _css_class(state: State) -> str:
    return "s-" + state.name.lower().replace("_", "-")


def _project_html(project: Project, hours: list[HourStatus], snowflake: bool) -> list[str]:
    e = html.escape
    out = [
        f'<section class="project" data-project="{e(project.id)}">',
        f"<h2>{e(project.label)}</h2>",
        '<table class="heatmap"><thead><tr><th>day (UTC)</th>'
        + "".join(f"<th>{n:02d}</th>" for n in range(24))
        + "</tr></thead><tbody>",
    ]
    by_day = days(hours)
    for day, in_day in by_day.items():
        by_hour = {h.start.hour: h for h in in_day}
        cells = "".join(_cell(by_hour.get(n), snowflake) for n in range(24))
        out.append(f"<tr><th>{e(day)}</th>{cells}</tr>")
    out.append("</tbody></table>")
    columns = [*file_counts([]), *(f"events {n}" for n in totals([], snowflake))]
    out.append(
        '<table class="days"><thead><tr><th>day</th>'
        + "".join(f"<th>{e(s.value)}</th>" for s in State if s is not State.OUTSIDE)
        + "".join(f"<th>{e(n)}</th>" for n in columns)
        + "</tr></thead><tbody>"
    )
    for day, in_day in by_day.items():
        counts = Counter(h.state for h in in_day)
        numbers = [*file_counts(in_day).values(), *totals(in_day, snowflake).values()]
        out.append(
            f'<tr data-day="{e(day)}"><th>{e(day)}</th>'
            + "".join(
                f'<td data-state="{s.value}">{counts[s]}</td>'
                for s in State
                if s is not State.OUTSIDE
            )
            + "".join(f"<td>{'?' if v is None else v}</td>" for v in numbers)
            + "</tr>"
        )
    out += ["</tbody></table>", "</section>"]
    return out


def _cell(hour: HourStatus | None, snowflake: bool) -> str:
    """One hour of the heatmap: its colour, its terminal mark, and its numbers on hover."""
    if hour is None:
        return '<td class="out"></td>'
    title = f"{format_hour(hour.start)}: {hour.state.value}"
    if hour.state is not State.OUTSIDE:
        title += f"; Amplitude: {hour.fetch.value}; {_numbers(file_counts([hour]))}; events: "
        title += _numbers(totals([hour], snowflake))
        if snowflake:
            title += f"; {hour.facts.raw_uuids} distinct uuids in its files"
        if hour.mismatches:
            title += f"; {_plural(len(hour.mismatches), 'mismatch')}"
    return (
        f'<td class="{_css_class(hour.state)}" data-hour="{format_hour(hour.start)}" '
        f'data-state="{hour.state.value}" title="{html.escape(title)}">'
        f"{html.escape(MARKS[hour.state].strip())}</td>"
    )


def _mismatches_html(report: Report) -> list[str]:
    e = html.escape
    found = report.mismatches
    if not found:
        return [f'<p class="ok">No mismatch: {all_well(report)}.</p>']
    out = [
        f'<h2 class="bad">Mismatches ({len(found)})</h2>',
        '<table class="mismatches"><thead><tr><th>project</th><th>hour</th><th>file</th>'
        "<th>problem</th><th>counts</th><th>repair</th></tr></thead><tbody>",
    ]
    for m in found:
        out.append(
            f"<tr><td>{e(m.project)}</td><td>{format_hour(m.hour)}</td>"
            f"<td>{e(m.file or '(hour)')}</td><td>{e(m.problem)}</td>"
            f"<td>{e(m.both_counts())}</td>"
            f"<td><code>{e(m.repair)}</code></td></tr>"
        )
    out.append("</tbody></table>")
    return out


def write_page(report: Report, path: Path) -> None:
    """Write the page under a temporary name and rename it: a reader never sees half."""
    try:
        write_atomic(path, page(report).encode("utf-8"))
    except OSError as exc:
        raise PipelineError(f"cannot write {path}: {exc.strerror or exc}") from exc
