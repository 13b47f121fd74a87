"""Watchers follow external event streams and turn their frames into gateway Events."""
