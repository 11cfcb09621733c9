"""The 2026-07-28 envelope for the backing hop, carrying the front client's own capabilities.

The SDK's client stamps its *own* capabilities into every request's `_meta`,
overwriting the caller's, so a backing server would think every client can
be asked for sampling, elicitation and roots. fedmcp builds the envelope
itself (per request: the front client's capabilities, the log level, the
`Mcp-Method`/`Mcp-Name`/`Mcp-Param-*` headers) and sends it through the
session's dispatcher. This is the one place that uses SDK internals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp import Client
from mcp.shared.dispatcher import CallOptions, ProgressFnT
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    NAME_BEARING_METHODS,
    encode_header_value,
    find_invalid_x_mcp_header,
    mcp_param_headers,
    x_mcp_header_map,
)
from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, LOG_LEVEL_META_KEY, PROTOCOL_VERSION_META_KEY

ADAPTER_INFO = {"name": "fedmcp-adapter", "version": "0.1.0"}

HeaderMaps = dict[str, dict[tuple[str, ...], str]]


def header_maps(tools: list[dict[str, Any]]) -> HeaderMaps:
    """Which tool arguments each tool mirrors into `Mcp-Param-*` headers (`x-mcp-header`)."""
    maps: HeaderMaps = {}
    for tool in tools:
        schema = tool.get("inputSchema")
        if isinstance(schema, dict) and find_invalid_x_mcp_header(schema) is None:
            mapping = x_mcp_header_map(schema)
            if mapping:
                maps[str(tool.get("name"))] = mapping
    return maps


def enveloped(
    version: str, params: dict[str, Any] | None, capabilities: Mapping[str, Any], log_level: str | None
) -> dict[str, Any]:
    """`params` with this hop's 2026-07-28 envelope in `_meta`."""
    body: dict[str, Any] = dict(params or {})
    meta: dict[str, Any] = dict(body.get("_meta") or {})
    meta[PROTOCOL_VERSION_META_KEY] = version
    meta[CLIENT_INFO_META_KEY] = ADAPTER_INFO
    meta[CLIENT_CAPABILITIES_META_KEY] = dict(capabilities)
    if log_level is not None:
        meta[LOG_LEVEL_META_KEY] = log_level
    body["_meta"] = meta
    return body


def hop_headers(version: str, method: str, body: Mapping[str, Any], maps: HeaderMaps) -> dict[str, str]:
    """The HTTP headers of a 2026-07-28 request with params `body`: version, method, name, and the
    arguments the tool mirrors into `Mcp-Param-*` headers."""
    headers = {MCP_PROTOCOL_VERSION_HEADER: version, MCP_METHOD_HEADER: method}
    name_key = NAME_BEARING_METHODS.get(method)
    name = body.get(name_key) if name_key else None
    if isinstance(name, str):
        headers[MCP_NAME_HEADER] = encode_header_value(name)
        if method == "tools/call" and name in maps:
            headers.update(mcp_param_headers(maps[name], body.get("arguments") or {}))
    return headers


async def send_modern(
    client: Client,
    method: str,
    params: dict[str, Any] | None,
    *,
    timeout: float,
    progress: ProgressFnT | None,
    capabilities: Mapping[str, Any],
    log_level: str | None,
    maps: HeaderMaps,
) -> dict[str, Any]:
    version = client.protocol_version
    body = enveloped(version, params, capabilities, log_level)
    opts: CallOptions = {"headers": hop_headers(version, method, body, maps), "timeout": timeout}
    if progress is not None:
        opts["on_progress"] = progress
    result: dict[str, Any] = await client.session._dispatcher.send_raw_request(method, body, opts)
    return result
