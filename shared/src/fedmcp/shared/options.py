"""Command-line options that several services share, defined once."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
from fedmcp.shared.buckets import Region


def region_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--region`, `--js-cluster` and `--js-replicas`, handed to the command as one `region: Region`."""

    @functools.wraps(f)
    def command(*args: Any, region_name: str, js_cluster: str | None, js_replicas: int, **kw: Any) -> Any:
        return f(*args, region=Region(region_name, js_cluster or None, js_replicas), **kw)

    options = [
        click.option(
            "--region",
            "region_name",
            envvar="FEDMCP_REGION",
            default="local",
            show_default=True,
            help="Region label; names the region's control-plane buckets.",
        ),
        click.option(
            "--js-cluster",
            envvar="FEDMCP_JS_CLUSTER",
            default=None,
            help="JetStream cluster (NATS cluster name) that holds the region's KV buckets; unset on a single server.",
        ),
        click.option(
            "--js-replicas",
            envvar="FEDMCP_JS_REPLICAS",
            type=click.IntRange(1, 5),
            default=1,
            show_default=True,
            help="Replicas of the region's KV buckets (3 on a 3-server JetStream cluster).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def regions_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--regions east,west`: every region whose consent grants this one reads (its own always included)."""
    return click.option(
        "--regions",
        envvar="FEDMCP_REGIONS",
        default="",
        help="Comma-separated regions whose consent grants are honoured here (default: only --region).",
    )(f)
