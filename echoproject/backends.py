"""Backends by name, one mechanism for every kind (speech providers, renderers).

A setting names the configured backend; a table maps names to the dotted paths of their
classes, imported on first use (an offline install never imports the cloud SDKs, a web
process never imports torch); one instance per process, built on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.utils.module_loading import import_string

T = TypeVar("T")


class Backends(Generic[T]):
    """The backends of one kind. `build` makes an instance from a backend's class (by default
    it calls the class)."""

    def __init__(
        self, setting: str, paths: dict[str, str], build: Callable[[Any], T] | None = None
    ) -> None:
        self.setting = setting
        self.paths = paths
        self._build: Callable[[Any], T] = build or (lambda cls: cls())
        self._instance: T | None = None
        self._lock = threading.RLock()

    def name(self) -> str:
        """The configured backend's name."""
        return getattr(settings, self.setting)

    def backend_class(self, name: str | None = None) -> Any:
        name = name or self.name()
        try:
            path = self.paths[name]
        except KeyError:
            raise ValueError(
                f"{self.setting}={name!r} is not one of {sorted(self.paths)}"
            ) from None
        return import_string(path)

    def build(self, name: str | None = None) -> T:
        """A new instance, of the configured backend unless `name` is given."""
        return self._build(self.backend_class(name))

    def get(self) -> T:
        """This process's instance of the configured backend, built on the first call."""
        with self._lock:
            if self._instance is None:
                self._instance = self.build()
            return self._instance

    def loaded(self) -> T | None:
        """The instance if this process has built it already, without building it."""
        return self._instance

    def forget(self) -> T | None:
        """Drop this process's instance (the next `get()` builds one again); returns it."""
        with self._lock:
            instance, self._instance = self._instance, None
        return instance
