"""Waking up when a directory changes (watchdog), for followers, presence and the indexer."""

from __future__ import annotations

from collections.abc import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer


class _Callback(FileSystemEventHandler):
    def __init__(self, callback: Callable[[FileSystemEvent], None]) -> None:
        self.callback = callback

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.callback(event)


def watch(path: str, callback: Callable[[FileSystemEvent], None], recursive: bool = False) -> Observer:
    """Start an observer that calls ``callback(event)`` (on its own thread) for every change under ``path``."""
    observer = Observer()
    observer.schedule(_Callback(callback), path, recursive=recursive)
    observer.start()
    return observer
