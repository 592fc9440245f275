#!/usr/bin/env python
"""Django's command-line utility."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "echoproject.settings")
    from django.core.management import execute_from_command_line

    from echoproject.env import exit_on_settings_error

    exit_on_settings_error()
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
