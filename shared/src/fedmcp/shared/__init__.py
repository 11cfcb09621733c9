"""The bus protocol and the helpers every fedmcp service shares.

Subjects, headers, KV buckets and envelopes are defined here once; services
import them and never format a subject string themselves.
"""

BUS_PROTOCOL_VERSION = "1"
"""Version of the fedmcp bus protocol carried in the `Fedmcp-Bus` header."""
