"""Waking up when a directory changes (watchdog), for followers, presence and the indexer."""

from __future__ import annotations

from collections.abc import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

NOT_CHANGES = frozenset({"opened", "closed_no_write"})  # a file read, not changed (watchdog reports those too)


class _Callback(FileSystemEventHandler):
    def __init__(self, callback: Callable[[FileSystemEvent], None]) -> None:
        self.callback = callback

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in NOT_CHANGES:  # else a reader that watches wakes itself by reading
            self.callback(event)


def watch(path: str, callback: Callable[[FileSystemEvent], None], recursive: bool = False) -> Observer:
    """Start an observer that calls ``callback(event)`` (on its own thread) for every change under ``path``
    (a file only opened or read is none)."""
    observer = Observer()
    observer.schedule(_Callback(callback), path, recursive=recursive)
    observer.start()
    return observer
