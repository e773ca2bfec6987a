"""The console's run summary says what summary.json says about the run's keys and noise."""

from __future__ import annotations

from rich.console import Console

from fl_vmix.apps.keys import DERIVED_KEYS_WARNING, KEY_ORIGINS
from fl_vmix.runtime.cli import summary_table


def rendered(summary: dict) -> str:
    console = Console(record=True, width=500)
    console.print(summary_table(summary))
    return " ".join(console.export_text().replace("│", " ").split())


def test_the_console_summary_shows_the_keys_and_every_warning_of_the_run():
    summary = {"config": {"experiment": "x"}, "keys": KEY_ORIGINS["derived"], "warnings": [DERIVED_KEYS_WARNING]}
    text = rendered(summary)
    assert "client keys" in text and KEY_ORIGINS["derived"] in text
    assert f"warning {DERIVED_KEYS_WARNING}" in text
    quiet = rendered({**summary, "keys": KEY_ORIGINS["random"], "warnings": []})
    assert "warning" not in quiet and KEY_ORIGINS["random"] in quiet
