"""Webhook destinations: which are allowed, which address a delivery connects to, how a URL is
shown.

A webhook goes only to public unicast addresses unless the operator allow-lists an intranet
receiver (``WEAREMO_WEBHOOK_ALLOW``: CIDRs and/or host names). Otherwise a key that may set
rules could point them at loopback, the cloud metadata service or private ranges and read the
outcome in the delivery history: an internal port scanner.

The check runs twice:

* when a rule is created or replaced (:func:`check_destination`): IP literals in any
  spelling (``127.1``, ``2130706433``, ``0x7f.1``, ``[::ffff:127.0.0.1]`` ...; pydantic's URL
  parser already normalises the IPv4 forms the WHATWG URL standard knows) and the
  ``localhost`` names are refused with a clear error;
* when a webhook is sent (:func:`pin_destination`): the host name is resolved once, every
  address it resolves to is checked, and the connection goes to that checked address (the
  URL's host is replaced by it; ``Host`` and TLS SNI keep the name), so a DNS answer that
  changes between check and connect (DNS rebinding) cannot redirect the delivery.

Example
-------
>>> allow = WebhookAllowList.parse(["10.1.0.0/16", "hooks.intranet"])
>>> check_destination("https://hooks.example.org/h", allow)
>>> check_destination("http://10.1.2.3:8080/h", allow)
>>> try:
...     check_destination("http://0x7f.1/h", allow)
... except DestinationRefusedError as exc:
...     print(exc)  # doctest: +ELLIPSIS
destination not allowed: 127.0.0.1 is a loopback address (allow it with ...)
>>> redact_url("https://user:pw@hooks.example.org/h?token=abc")
'https://***@hooks.example.org/h?token=***'
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "DestinationRefusedError",
    "IPAddress",
    "PinnedDestination",
    "Resolver",
    "WebhookAllowList",
    "address_refusal",
    "check_destination",
    "destination_key",
    "pin_destination",
    "redact_url",
    "system_resolve",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``resolve(host, port)`` → the addresses a TCP connection to ``host`` may go to.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_HINT = "allow it with WEAREMO_WEBHOOK_ALLOW"
_DNS_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="wearemo-dns")
_LOOKS_NUMERIC = re.compile(r"[\d.]+(/.*)?|.*[:/].*")  # IPv4, anything with ":" or "/"
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
                        r"(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598: the carrier's private side
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the low 32 bits are an IPv4 address
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: local-use translation


class DestinationRefusedError(ValueError):
    """A webhook URL whose destination is not allowed (its message says why)."""


def _normal_host(host: str) -> str:
    # "[::1]" -> "::1", "Hooks.Example.ORG." -> "hooks.example.org" (the trailing dot names the
    # same host, so "localhost." must not slip past a check for "localhost").
    return host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")


@dataclass(frozen=True, slots=True)
class WebhookAllowList:
    """Intranet receivers the operator allows (``WEAREMO_WEBHOOK_ALLOW``).

    Attributes
    ----------
    networks
        Addresses in these networks are allowed for any host name (``10.0.0.0/8``,
        ``127.0.0.1/32`` ...).
    hosts
        These host names (exact, case-insensitive) may resolve to non-public unicast
        addresses; multicast and the unspecified address stay refused.

    Example
    -------
    >>> allow = WebhookAllowList.parse(["127.0.0.1", "Hooks.Intranet."])
    >>> allow.networks, sorted(allow.hosts)
    ((IPv4Network('127.0.0.1/32'),), ['hooks.intranet'])
    """

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> WebhookAllowList:
        """Build the list from CIDRs, single addresses and host names.

        Raises
        ------
        ValueError
            An entry that is neither (e.g. a network with host bits set, ``10.0.0.1/8``).

        Example
        -------
        >>> WebhookAllowList.parse(["fd00::/8"]).networks
        (IPv6Network('fd00::/8'),)
        """
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = _normal_host(raw)
            if not entry:
                continue
            if "://" in entry:
                raise ValueError(f"webhook allow-list entry {raw!r}: a CIDR, an address or a "
                                 "host name, not a URL")
            try:
                networks.append(ipaddress.ip_network(entry))
                continue
            except ValueError as exc:
                if _LOOKS_NUMERIC.fullmatch(entry):
                    raise ValueError(f"webhook allow-list entry {raw!r}: {exc}") from None
            if not _HOST_NAME.match(entry):
                raise ValueError(f"webhook allow-list entry {raw!r} is neither a CIDR, an "
                                 "address nor a host name")
            hosts.add(entry)
        return cls(tuple(networks), frozenset(hosts))

    def allows_host(self, host: str) -> bool:
        """``host`` is allow-listed by name."""
        return _normal_host(host) in self.hosts

    def allows_address(self, ip: IPAddress) -> bool:
        """``ip`` (or the IPv4 address it embeds) is in an allowed network."""
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_v4(ip)) is not None:
            candidates.append(inner)
        return any(c in net for c in candidates for net in self.networks
                   if c.version == net.version)


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast destination, or None when it is one.

    Example
    -------
    >>> address_refusal(ipaddress.ip_address("169.254.169.254"))
    'a link-local address (cloud metadata services live here)'
    >>> address_refusal(ipaddress.ip_address("93.184.215.14")) is None
    True
    """
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None and (why := address_refusal(inner)) is not None:
            return f"{why} (it embeds {inner})"
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d, nothing more
            return None
        if ip.is_site_local:
            return "a site-local address"
        if ip in _NAT64_LOCAL:
            return "a local-use NAT64 address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata services live here)"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "a shared (carrier-grade NAT) address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "not a globally routable address"
    return None


def _literal_address(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is one in any spelling the resolver accepts."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:  # inet_aton forms (0x7f.1, 0177.0.0.1, 2130706433): numeric only, no DNS query
        infos = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return None
    return ipaddress.ip_address(str(infos[0][4][0]).split("%", 1)[0])


def _is_local_name(host: str) -> bool:
    # RFC 6761: "localhost" and every name under it are loopback, whatever DNS says.
    return host == "localhost" or host.endswith(".localhost")


def _address_allowed(host: str, ip: IPAddress, allow: WebhookAllowList) -> str | None:
    """None when a connection to ``ip`` (for ``host``) is allowed, else why not."""
    if allow.allows_address(ip):
        return None
    why = address_refusal(ip)
    if why is None:
        return None
    if allow.allows_host(host) and not (ip.is_multicast or ip.is_unspecified):
        return None
    return f"{ip} is {why}"


def _host_port(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise DestinationRefusedError(
            f"destination not allowed: scheme {parts.scheme!r} (http or https only)")
    host = _normal_host(parts.hostname or "")
    if not host:
        raise DestinationRefusedError("destination not allowed: the URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise DestinationRefusedError(f"destination not allowed: {exc}") from None
    return host, port, parts.scheme


def check_destination(url: str, allow: WebhookAllowList) -> None:
    """Refuse a webhook URL whose host is a non-public address or a ``localhost`` name.

    Host names are checked again, after resolution, when the webhook is sent
    (:func:`pin_destination`).

    Raises
    ------
    DestinationRefusedError
        With the reason (and the setting that would allow it).

    Example
    -------
    >>> try:
    ...     check_destination("http://[::1]:8080/h", WebhookAllowList())
    ... except DestinationRefusedError as exc:
    ...     print(exc)  # doctest: +ELLIPSIS
    destination not allowed: ::1 is a loopback address (allow it with ...)
    """
    host, _, _ = _host_port(url)
    if allow.allows_host(host):
        return
    ip = _literal_address(host)
    if ip is None:
        if _is_local_name(host):
            raise DestinationRefusedError(
                f"destination not allowed: {host!r} is the local host ({_HINT})")
        return
    why = _address_allowed(host, ip, allow)
    if why is not None:
        raise DestinationRefusedError(f"destination not allowed: {why} ({_HINT})")


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for a TCP connection to ``host:port``.

    Example
    -------
    >>> asyncio.run(system_resolve("127.0.0.1", 80))
    ['127.0.0.1']
    """
    # Its own threads: a resolver that hangs must not take the default executor's, which the
    # outbox's SQLite calls use.
    infos = await asyncio.get_running_loop().run_in_executor(
        _DNS_POOL, functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM,
                                     proto=socket.IPPROTO_TCP))
    out: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in out:
            out.append(addr)
    return out


@dataclass(frozen=True, slots=True)
class PinnedDestination:
    """Where one delivery connects: the checked address, and the name it is for.

    Attributes
    ----------
    url
        The webhook URL with its host replaced by ``address``.
    host_header
        ``Host`` to send (the URL's own host and port).
    sni_hostname
        The name for TLS SNI and certificate checks (https to a host name), else None.
    address
        The resolved, checked address the connection goes to.
    """

    url: str
    host_header: str
    sni_hostname: str | None
    address: IPAddress


async def pin_destination(
    url: str, allow: WebhookAllowList, *, resolve: Resolver = system_resolve
) -> PinnedDestination:
    """Resolve a webhook URL's host once, check every address, pin the first.

    A name that resolves to any refused address is refused as a whole (a mix of public and
    internal answers is how rebinding attacks start).

    Raises
    ------
    DestinationRefusedError
        The host, or an address it resolves to, is not allowed.
    OSError
        The name does not resolve (``socket.gaierror``): a retryable failure.

    Example
    -------
    >>> pinned = asyncio.run(pin_destination("http://127.0.0.1:9/h",
    ...                                      WebhookAllowList.parse(["127.0.0.0/8"])))
    >>> pinned.url, pinned.host_header
    ('http://127.0.0.1:9/h', '127.0.0.1:9')
    """
    check_destination(url, allow)
    host, port, scheme = _host_port(url)
    literal = _literal_address(host)
    found = [str(literal)] if literal is not None else await resolve(host, port)
    if not found:
        raise socket.gaierror(f"{host!r} resolves to no address")
    addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
    for ip in addresses:
        why = _address_allowed(host, ip, allow)
        if why is not None:
            raise DestinationRefusedError(
                f"destination not allowed: {host} resolves to {why} ({_HINT})")
    ip = addresses[0]
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]  # host[:port] as written, no userinfo
    userinfo = parts.netloc.rpartition("@")[0]
    shown = f"[{ip}]" if ip.version == 6 else str(ip)
    pinned_netloc = (f"{userinfo}@" if userinfo else "") + shown + \
        (f":{parts.port}" if parts.port is not None else "")
    pinned = urlunsplit(parts._replace(netloc=pinned_netloc))
    sni = host if scheme == "https" and literal is None else None
    return PinnedDestination(pinned, netloc, sni, ip)


def destination_key(url: str) -> str:
    """The destination a webhook URL counts against for per-destination concurrency: its
    host, normalised (case, trailing dot, brackets), without the port.

    Example
    -------
    >>> destination_key("https://Hooks.Example.org.:8443/a")
    'hooks.example.org'
    """
    try:
        return _normal_host(urlsplit(url).hostname or "")
    except ValueError:
        return ""


def redact_url(url: str) -> str:
    """``url`` with its credentials hidden: user info and every query value become ``***``.

    For keys that may read a rule but not manage the service (a URL such as
    ``https://user:token@host/h?key=...`` carries the receiver's credentials).

    Example
    -------
    >>> redact_url("https://hooks.example.org/a/b?x=1&y=2#frag")
    'https://hooks.example.org/a/b?x=***&y=***#***'
    """
    parts = urlsplit(url)
    _, at, hostport = parts.netloc.rpartition("@")
    netloc = f"***@{hostport}" if at else hostport
    # Names stay (they say what the value is); a bare item without "=" may itself be a token.
    query = "&".join(f"{item.partition('=')[0]}=***" if "=" in item else "***"
                     for item in parts.query.split("&") if item)
    return urlunsplit((parts.scheme, netloc, parts.path, query,
                       "***" if parts.fragment else ""))
