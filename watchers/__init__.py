"""Watchers follow external event streams and turn their frames into gateway Events."""

from __future__ import annotations

from gateway.config import (
    HttpPollJsonWatcherSettings,
    NearActionsWatcherSettings,
    NeardataWatcherSettings,
    QueryApiWatcherSettings,
    SocialIndexWatcherSettings,
    WatcherSettings,
    WebsocketJsonWatcherSettings,
)
from watchers.base import EventSink, Watcher, WatcherState


def build_watcher(settings: WatcherSettings, sink: EventSink) -> Watcher:
    """The watcher for one ``[[watchers]]`` table."""
    if isinstance(settings, NeardataWatcherSettings):
        from watchers.neardata import NeardataWatcher

        return NeardataWatcher(settings, sink)
    if isinstance(settings, QueryApiWatcherSettings):
        from watchers.queryapi import QueryApiWatcher

        return QueryApiWatcher(settings, sink)
    if isinstance(settings, NearActionsWatcherSettings):
        from watchers.near_actions import NearActionsWatcher

        return NearActionsWatcher(settings, sink)
    if isinstance(settings, SocialIndexWatcherSettings):
        from watchers.social_index import SocialIndexWatcher

        return SocialIndexWatcher(settings, sink)
    if isinstance(settings, WebsocketJsonWatcherSettings):
        from watchers.json_feeds import WebsocketJsonWatcher

        return WebsocketJsonWatcher(settings, sink)
    if isinstance(settings, HttpPollJsonWatcherSettings):
        from watchers.json_feeds import HttpPollJsonWatcher

        return HttpPollJsonWatcher(settings, sink)
    raise TypeError(f"unknown watcher settings {type(settings).__name__}")


__all__ = ["EventSink", "Watcher", "WatcherState", "build_watcher"]
