"""A bleak backend that runs on the bumble Bluetooth stack (no radio, no OS Bluetooth needed).

bleak picks its backend from the operating system (BlueZ, CoreBluetooth, WinRT). Where there is
no radio (CI, containers, this project's tests and demo) the bridge passes
``backend=BleakClientBumble`` / ``backend=BleakScannerBumble`` plus a
``bumble=BumbleTransport(...)`` keyword argument, which bleak forwards to the backend
constructor; the bridge code above it is the same bleak code that runs on real hardware.

The central side is one bumble host :class:`~bumble.device.Device` per transport (a shared
in-process :class:`~bumble.link.LocalLink`, or an HCI transport such as
``tcp-client:127.0.0.1:PORT`` to ``python -m bumble.apps.controllers``), shared by every client
and scanner on that transport and event loop, so several peripherals can be connected at once.

Covered: scanning (local name, service UUIDs, manufacturer and service data, TX power, RSSI,
service-UUID filter, ``find_device_by_name`` / ``find_device_by_address``), connect with an
outer timeout, ATT MTU exchange on connect (``BumbleTransport.mtu``, default 247;
``mtu_size``), full service / characteristic / descriptor discovery (optionally restricted with
``services=``), read / write of characteristics (with and without response) and descriptors,
``start_notify`` / ``stop_notify`` (CCCD write; notifications preferred over indications,
indications confirmed, as the Polar PMD control point needs),
``use_cached`` reads, GATT errors raised as :class:`bleak.exc.BleakGATTProtocolError`, and the
disconnected callback on an unsolicited link loss.

Not covered: pairing and bonding (``pair()`` / ``unpair()`` raise ``NotImplementedError``;
``BleakClient(pair=True)`` logs a warning and connects unpaired), encryption and authenticated
characteristics, ``BleakScanner`` passive-scan ``bluez``/``cb`` options (ignored), the adapter API
(``BleakAdapter``: connected-device lookup), included services, reliable/prepared writes (long
writes are not split), connection-parameter and PHY control, BR/EDR (classic) devices,
address resolution of private addresses, a services cache (services are discovered on every
connect, whatever ``use_services_cache`` says) and the platform options of ``start_notify``
(``bluez=`` / ``cb=``: ignored).

Two workarounds for bumble 0.0.236 are built in: its ``Device.connect`` timeout never fires for an
absent peer, so every connect runs under an outer ``asyncio.timeout``; and its virtual
controller ignores "create connection cancel", so after a timed-out connect on a ``LocalLink`` the
controller's pending connection is cleared, and a connection that completes after its connect
gave up (always possible on an HCI transport, rarely on a loaded ``LocalLink``) is disconnected as
soon as it appears.

Example
-------
>>> import asyncio
>>> from bumble.link import LocalLink
>>> from bleak import BleakScanner
>>> async def scan_once() -> int:
...     transport = BumbleTransport(link=LocalLink())
...     try:
...         found = await BleakScanner.discover(timeout=0.2, backend=BleakScannerBumble,
...                                             bumble=transport)
...     finally:
...         await bumble_central_close(transport)
...     return len(found)
>>> asyncio.run(scan_once())
0
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from bleak.args import SizedBuffer
from bleak.assigned_numbers import CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError, BleakGATTProtocolError
from bumble import att, hci
from bumble import core as bumble_core
from bumble.controller import Controller
from bumble.core import AdvertisingData
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt_client import CharacteristicProxy, ServiceProxy
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport import Transport, open_transport
from bumble.transport.common import AsyncPipeSink

__all__ = [
    "DEFAULT_MTU",
    "BleakClientBumble",
    "BleakScannerBumble",
    "BumbleTransport",
    "bumble_central_close",
]

logger = logging.getLogger(__name__)

#: ATT MTU requested on connect: 247 lets one notification carry 244 bytes (one LE data PDU).
DEFAULT_MTU = 247
_ATT_DEFAULT_MTU = 23

_PROPERTY_NAMES: list[tuple[int, CharacteristicPropertyName]] = [
    (0x01, "broadcast"),
    (0x02, "read"),
    (0x04, "write-without-response"),
    (0x08, "write"),
    (0x10, "notify"),
    (0x20, "indicate"),
    (0x40, "authenticated-signed-writes"),
    (0x80, "extended-properties"),
]


@dataclass(frozen=True, eq=False)
class BumbleTransport:
    """Where the bumble central lives: an in-process link or an HCI transport.

    Pass it to bleak as ``bumble=`` next to ``backend=``; it is forwarded to the backend.

    Parameters
    ----------
    link
        A shared in-process :class:`bumble.link.LocalLink` (the peripherals' virtual
        controllers are on the same link). Exactly one of ``link`` and ``spec``.
    spec
        A bumble transport name, e.g. ``"tcp-client:127.0.0.1:9001"`` (a controller exposed
        by ``python -m bumble.apps.controllers tcp-server:127.0.0.1:9001 ...``).
    mtu
        ATT MTU requested on every connect (23..517). The server may grant less.
    name
        GAP name of the central.

    Example
    -------
    >>> from bumble.link import LocalLink
    >>> BumbleTransport(link=LocalLink()).mtu
    247
    """

    link: LocalLink | None = None
    spec: str | None = None
    mtu: int = DEFAULT_MTU
    name: str = "wearemo-bridge"

    def __post_init__(self) -> None:
        if (self.link is None) == (self.spec is None):
            raise ValueError("BumbleTransport: give exactly one of link= and spec=")
        if not _ATT_DEFAULT_MTU <= self.mtu <= 517:
            raise ValueError(f"mtu: must be within 23..517, got {self.mtu}")

    @property
    def key(self) -> object:
        """Identity of the radio this transport reaches (centrals are shared per key)."""
        return self.link if self.link is not None else ("spec", self.spec)


# --------------------------------------------------------------------------------------------
# The shared central
# --------------------------------------------------------------------------------------------


class _Central:
    """One bumble host + controller acting as central for every client/scanner on a transport."""

    def __init__(self, transport: BumbleTransport) -> None:
        self.transport = transport
        self.device: Device | None = None
        self.controller: Controller | None = None
        self.hci_transport: Transport | None = None
        self.connect_lock = asyncio.Lock()
        self.scanners: set[BleakScannerBumble] = set()
        self.scan_lock = asyncio.Lock()
        # Advertised address strings -> typed addresses (public vs random), names.
        self.known_addresses: dict[str, hci.Address] = {}
        self.known_names: dict[str, str] = {}
        self.expected_peer: hci.Address | None = None
        self.claimed: set[int] = set()

    async def open(self) -> None:
        address = hci.Address.generate_static_address()
        if self.transport.link is not None:
            self.controller = Controller(
                f"{self.transport.name}-controller", link=self.transport.link
            )
            host = Host(self.controller, AsyncPipeSink(self.controller))
            self.device = Device(name=self.transport.name, address=address, host=host)
        else:
            assert self.transport.spec is not None
            self.hci_transport = await open_transport(self.transport.spec)
            self.device = Device.with_hci(
                self.transport.name, address, self.hci_transport.source, self.hci_transport.sink
            )
        self.device.on(Device.EVENT_ADVERTISEMENT, self._on_advertisement)
        self.device.on(Device.EVENT_CONNECTION, self._on_connection)
        await self.device.power_on()

    async def close(self) -> None:
        device = self.device
        if device is not None:
            for connection in list(device.connections.values()):
                with contextlib.suppress(Exception):
                    await connection.disconnect()
            with contextlib.suppress(Exception):
                await device.power_off()
        if self.hci_transport is not None:
            with contextlib.suppress(Exception):
                await self.hci_transport.close()
        if self.controller is not None and self.transport.link is not None:
            with contextlib.suppress(KeyError):
                self.transport.link.remove_controller(self.controller)
        self.device = None

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        address_str = advertisement.address.to_string(False)
        self.known_addresses[address_str] = advertisement.address
        name = advertisement.data.get(AdvertisingData.COMPLETE_LOCAL_NAME) or (
            advertisement.data.get(AdvertisingData.SHORTENED_LOCAL_NAME)
        )
        if isinstance(name, str):
            self.known_names[address_str] = name
        for scanner in list(self.scanners):
            scanner._on_advertisement(advertisement)

    def _on_connection(self, connection: Connection) -> None:
        # A connection nobody is waiting for is a late completion of a timed-out connect
        # (bumble's controller ignores the cancel): drop it so the peer can advertise again.
        if connection.role != hci.Role.CENTRAL:
            return
        if self.expected_peer is not None and connection.peer_address == self.expected_peer:
            return
        logger.warning("dropping unexpected connection to %s", connection.peer_address)
        asyncio.get_running_loop().create_task(_disconnect_quietly(connection))

    def resolve(self, address: str) -> hci.Address:
        """Typed address for a bleak address string (``/P`` suffix marks a public address)."""
        if address.upper().endswith("/P"):
            return hci.Address(address.upper(), hci.Address.PUBLIC_DEVICE_ADDRESS)
        known = self.known_addresses.get(address.upper())
        if known is not None:
            return known
        try:
            return hci.Address(address.upper(), hci.Address.RANDOM_DEVICE_ADDRESS)
        except (ValueError, Exception) as error:  # bumble raises its own InvalidArgumentError
            raise BleakError(f"not a Bluetooth address: {address!r}") from error

    def abandon_pending_connect(self) -> None:
        """Clear the controller's pending create-connection after an outer timeout."""
        if self.controller is not None:
            self.controller.pending_le_connection = None


async def _disconnect_quietly(connection: Connection) -> None:
    with contextlib.suppress(Exception):
        await connection.disconnect()


_centrals: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[object, _Central]] = (
    weakref.WeakKeyDictionary()
)
_opening: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[object, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


async def _central_get(transport: BumbleTransport) -> _Central:
    loop = asyncio.get_running_loop()
    per_loop = _centrals.setdefault(loop, {})
    lock = _opening.setdefault(loop, {}).setdefault(transport.key, asyncio.Lock())
    async with lock:
        central = per_loop.get(transport.key)
        if central is None or central.device is None:
            central = _Central(transport)
            await central.open()
            per_loop[transport.key] = central
        return central


async def bumble_central_close(transport: BumbleTransport) -> None:
    """Disconnect everything and shut down the shared central of ``transport`` (this loop).

    Clients and scanners opened later on the same transport start a fresh central.

    Example
    -------
    >>> import asyncio
    >>> from bumble.link import LocalLink
    >>> asyncio.run(bumble_central_close(BumbleTransport(link=LocalLink())))
    """
    loop = asyncio.get_running_loop()
    central = _centrals.get(loop, {}).pop(transport.key, None)
    if central is not None:
        await central.close()


def _uuid_str(value: bumble_core.UUID) -> str:
    """bumble UUID -> bleak's lowercase 128-bit string."""
    return str(uuid.UUID(bytes=bytes(reversed(value.to_bytes(force_128=True)))))


def _att_error(error: att.ATT_Error) -> BleakGATTProtocolError:
    return BleakGATTProtocolError(int(error.error_code))


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------


class BleakClientBumble(BaseBleakClient):
    """bleak client backend over a bumble central.

    Use through bleak: ``BleakClient(address_or_device, backend=BleakClientBumble,
    bumble=BumbleTransport(...))``.

    Parameters
    ----------
    address_or_ble_device
        A :class:`~bleak.backends.device.BLEDevice` from a bumble scan, or an address string
        (``"AA:BB:CC:DD:EE:FF"``; random unless seen in a scan or suffixed ``/P``).
    disconnected_callback
        Called (no arguments; bleak binds the client) after an unsolicited link loss.
    timeout
        Seconds for connect + MTU exchange + discovery.
    services
        Optional set of normalised service UUIDs to discover (others are skipped).
    bumble
        The :class:`BumbleTransport` to connect through (required).

    Example
    -------
    >>> from bleak import BleakClient
    >>> from bumble.link import LocalLink
    >>> client = BleakClient("F0:F1:F2:F3:F4:F5", backend=BleakClientBumble,
    ...                      bumble=BumbleTransport(link=LocalLink()), timeout=5.0)
    >>> client.is_connected, client.mtu_size
    (False, 23)
    """

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None,
        timeout: float,
        services: set[str] | None = None,
        bumble: BumbleTransport | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout
        )
        if bumble is None:
            raise BleakError(
                "BleakClientBumble needs bumble=BumbleTransport(link=... or spec=...)"
            )
        self._transport = bumble
        self._device_address: hci.Address | None = None
        if isinstance(address_or_ble_device, BLEDevice) and isinstance(
            address_or_ble_device.details, hci.Address
        ):
            self._device_address = address_or_ble_device.details
        self._device_name = (
            address_or_ble_device.name if isinstance(address_or_ble_device, BLEDevice) else None
        )
        self._services_filter = services
        self._central: _Central | None = None
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._disconnecting = False
        self._disconnected = asyncio.Event()
        self._subscribers: dict[int, Callable[[bytes], None]] = {}

    # -- properties ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The advertised name if known, else the address."""
        if self._device_name:
            return self._device_name
        if self._central is not None:
            return self._central.known_names.get(self.address.upper(), self.address)
        return self.address

    @property
    def mtu_size(self) -> int:
        """Negotiated ATT MTU (23 before connecting or before the exchange)."""
        if self._connection is None:
            return _ATT_DEFAULT_MTU
        return int(self._connection.att_mtu)

    @property
    def is_connected(self) -> bool:
        """True while the link is up."""
        return self._connection is not None and not self._disconnected.is_set()

    # -- connectivity -------------------------------------------------------------------------

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        """Connect, exchange the ATT MTU and discover services, all within ``timeout``."""
        if pair:
            logger.warning("BleakClientBumble cannot pair; connecting without pairing")
        if self.is_connected:
            return
        central = await _central_get(self._transport)
        self._central = central
        assert central.device is not None
        peer_address = self._device_address or central.resolve(self.address)
        try:
            async with asyncio.timeout(self._timeout):
                async with central.connect_lock:
                    central.expected_peer = peer_address
                    try:
                        # bumble's own timeout never fires for an absent peer: rely on ours.
                        connection = await central.device.connect(peer_address, timeout=None)
                    except BaseException:
                        central.abandon_pending_connect()
                        raise
                    finally:
                        central.expected_peer = None
                self._attach(connection)
                peer = Peer(connection)
                self._peer = peer
                try:
                    await peer.request_mtu(self._transport.mtu)
                except att.ATT_Error as error:
                    logger.warning("MTU exchange refused (%s); staying at 23", error)
                await self._discover(peer)
        except TimeoutError as error:
            await self._drop_connection()
            raise BleakError(
                f"connect to {self.address} timed out after {self._timeout} s"
            ) from error
        except asyncio.CancelledError:
            await self._drop_connection()
            raise
        except Exception as error:
            await self._drop_connection()
            if isinstance(error, BleakError):
                raise
            raise BleakError(f"connect to {self.address} failed: {error}") from error

    def _attach(self, connection: Connection) -> None:
        self._connection = connection
        self._disconnected.clear()
        self._disconnecting = False
        connection.on(Connection.EVENT_DISCONNECTION, self._on_disconnection)

    def _on_disconnection(self, reason: int) -> None:
        self._disconnected.set()
        self._subscribers.clear()
        if not self._disconnecting and self._disconnected_callback is not None:
            logger.info("link to %s lost (reason 0x%02X)", self.address, reason)
            self._disconnected_callback()

    async def _drop_connection(self) -> None:
        if self._connection is not None and not self._disconnected.is_set():
            self._disconnecting = True
            await _disconnect_quietly(self._connection)
        self._connection = None
        self._peer = None

    async def _discover(self, peer: Peer) -> None:
        uuids = (
            [bumble_core.UUID(u) for u in sorted(self._services_filter)]
            if self._services_filter
            else []
        )
        proxies: list[ServiceProxy] = await peer.discover_services(uuids)
        collection = BleakGATTServiceCollection()
        for service_proxy in proxies:
            await peer.discover_characteristics(service=service_proxy)
            service = BleakGATTService(
                service_proxy, service_proxy.handle, _uuid_str(service_proxy.uuid)
            )
            collection.add_service(service)
            for char_proxy in service_proxy.characteristics:
                await peer.discover_descriptors(characteristic=char_proxy)
                props = int(char_proxy.properties)
                characteristic = BleakGATTCharacteristic(
                    char_proxy,
                    char_proxy.handle,
                    _uuid_str(char_proxy.uuid),
                    [name for bit, name in _PROPERTY_NAMES if props & bit],
                    lambda: self.mtu_size - 3,
                    service,
                )
                collection.add_characteristic(characteristic)
                for desc_proxy in char_proxy.descriptors:
                    collection.add_descriptor(
                        BleakGATTDescriptor(
                            desc_proxy, desc_proxy.handle, _uuid_str(desc_proxy.type),
                            characteristic,
                        )
                    )
        self.services = collection

    async def disconnect(self) -> None:
        """Disconnect (no-op when not connected); the disconnected callback is not called."""
        connection = self._connection
        if connection is None:
            return
        if not self._disconnected.is_set():
            self._disconnecting = True
            try:
                async with asyncio.timeout(max(self._timeout, 1.0)):
                    await connection.disconnect()
                    await self._disconnected.wait()
            except Exception as error:  # link already gone underneath us
                logger.debug("disconnect from %s: %s", self.address, error)
        self._connection = None
        self._peer = None

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        """Not supported by this backend."""
        raise NotImplementedError("BleakClientBumble does not support pairing")

    async def unpair(self) -> None:
        """Not supported by this backend."""
        raise NotImplementedError("BleakClientBumble does not support pairing")

    # -- I/O ------------------------------------------------------------------------------------

    def _require_peer(self) -> Peer:
        if self._peer is None or not self.is_connected:
            raise BleakError("Not connected")
        return self._peer

    async def _read(self, handle: int, use_cached: bool) -> bytearray:
        peer = self._require_peer()
        if use_cached:
            cached = peer.gatt_client.cached_values.get(handle)
            if cached is not None:
                return bytearray(cached[1])
        try:
            return bytearray(await peer.read_value(handle))
        except att.ATT_Error as error:
            raise _att_error(error) from error

    async def _write(self, handle: int, data: SizedBuffer, with_response: bool) -> None:
        peer = self._require_peer()
        try:
            await peer.write_value(handle, bytes(data), with_response=with_response)
        except att.ATT_Error as error:
            raise _att_error(error) from error

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False,
        **kwargs: Any,
    ) -> bytearray:
        """Read a characteristic value (long values are read in full)."""
        return await self._read(characteristic.handle, use_cached)

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        """Read a descriptor value."""
        return await self._read(descriptor.handle, use_cached)

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        """Write a characteristic value, with or without response."""
        await self._write(characteristic.handle, data, response)

    async def write_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, data: SizedBuffer
    ) -> None:
        """Write a descriptor value (with response)."""
        await self._write(descriptor.handle, data, True)

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        """Write the CCCD and deliver each notification (or indication) to ``callback``."""
        peer = self._require_peer()
        proxy = characteristic.obj
        if not isinstance(proxy, CharacteristicProxy):
            raise BleakError(f"characteristic {characteristic} was not discovered by this backend")
        old = self._subscribers.pop(characteristic.handle, None)

        def deliver(value: bytes) -> None:
            callback(bytearray(value))

        try:
            if old is not None:
                await peer.unsubscribe(proxy, old)
            await peer.subscribe(proxy, deliver, prefer_notify=True)
        except att.ATT_Error as error:
            raise _att_error(error) from error
        self._subscribers[characteristic.handle] = deliver

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        """Stop delivering notifications and clear the CCCD."""
        peer = self._require_peer()
        proxy = characteristic.obj
        subscriber = self._subscribers.pop(characteristic.handle, None)
        if subscriber is None or not isinstance(proxy, CharacteristicProxy):
            return
        try:
            await peer.unsubscribe(proxy, subscriber)
        except att.ATT_Error as error:
            raise _att_error(error) from error


# --------------------------------------------------------------------------------------------
# Scanner
# --------------------------------------------------------------------------------------------


def _advertisement_data(advertisement: Advertisement) -> AdvertisementData:
    data = advertisement.data
    name = data.get(AdvertisingData.COMPLETE_LOCAL_NAME) or data.get(
        AdvertisingData.SHORTENED_LOCAL_NAME
    )
    service_uuids: list[str] = []
    for ad_type in (
        AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
        AdvertisingData.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
        AdvertisingData.COMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS,
        AdvertisingData.INCOMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS,
        AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
        AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
    ):
        for uuids in data.get_all(ad_type):
            service_uuids.extend(_uuid_str(u) for u in uuids)  # type: ignore[union-attr]
    manufacturer: dict[int, bytes] = {}
    for maker in data.get_all(AdvertisingData.MANUFACTURER_SPECIFIC_DATA):
        if isinstance(maker, tuple) and isinstance(maker[0], int):
            manufacturer[maker[0]] = bytes(maker[1])
    service_data: dict[str, bytes] = {}
    for ad_type in (
        AdvertisingData.SERVICE_DATA_16_BIT_UUID,
        AdvertisingData.SERVICE_DATA_32_BIT_UUID,
        AdvertisingData.SERVICE_DATA_128_BIT_UUID,
    ):
        for entry in data.get_all(ad_type):
            if isinstance(entry, tuple) and isinstance(entry[0], bumble_core.UUID):
                service_data[_uuid_str(entry[0])] = bytes(entry[1])
    tx_power = data.get(AdvertisingData.TX_POWER_LEVEL)
    return AdvertisementData(
        local_name=name if isinstance(name, str) else None,
        manufacturer_data=manufacturer,
        service_data=service_data,
        service_uuids=service_uuids,
        tx_power=tx_power if isinstance(tx_power, int) else None,
        rssi=int(advertisement.rssi),
        platform_data=(advertisement,),
    )


class BleakScannerBumble(BaseBleakScanner):
    """bleak scanner backend over a bumble central.

    Use through bleak: ``BleakScanner(backend=BleakScannerBumble, bumble=BumbleTransport(...))``
    or ``BleakScanner.find_device_by_name(name, backend=BleakScannerBumble, bumble=...)``.
    Found devices carry the typed bumble address in ``BLEDevice.details``.

    Example
    -------
    >>> from bumble.link import LocalLink
    >>> scanner = BleakScannerBumble(None, None, "active",
    ...                              bumble=BumbleTransport(link=LocalLink()))
    >>> scanner.seen_devices
    {}
    """

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"] = "active",
        *,
        bumble: BumbleTransport | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        if bumble is None:
            raise BleakError(
                "BleakScannerBumble needs bumble=BumbleTransport(link=... or spec=...)"
            )
        if scanning_mode not in ("active", "passive"):
            raise ValueError(
                f"scanning_mode: expected 'active' or 'passive', got {scanning_mode!r}"
            )
        self._transport = bumble
        self._active = scanning_mode == "active"
        self._central: _Central | None = None

    async def start(self) -> None:
        """Start scanning (the central keeps scanning while any scanner is running)."""
        self.seen_devices = {}
        central = await _central_get(self._transport)
        self._central = central
        assert central.device is not None
        async with central.scan_lock:
            central.scanners.add(self)
            if not central.device.is_scanning:
                await central.device.start_scanning(active=self._active, filter_duplicates=False)

    async def stop(self) -> None:
        """Stop scanning (the radio stops when the last scanner stops)."""
        central = self._central
        if central is None or central.device is None:
            return
        async with central.scan_lock:
            central.scanners.discard(self)
            if not central.scanners and central.device.is_scanning:
                await central.device.stop_scanning()

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        adv = _advertisement_data(advertisement)
        if not self.is_allowed_uuid(adv.service_uuids):
            return
        address = advertisement.address.to_string(False)
        device = self.create_or_update_device(
            address, address, adv.local_name, advertisement.address, adv
        )
        self.call_detection_callbacks(device, adv)
