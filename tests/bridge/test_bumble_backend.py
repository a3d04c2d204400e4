"""bleak's own API driving a real bumble stack through ``firmware_bridge.bumble_backend``.

A small bumble GATT server (this file's fixture peripheral) and the bleak-side central share an
in-process ``LocalLink``; nothing is mocked.
"""

from __future__ import annotations

import asyncio

import pytest
from bleak import BleakClient, BleakScanner
from bleak.exc import BleakError, BleakGATTProtocolError
from bumble import hci
from bumble.att import ATT_READ_NOT_PERMITTED_ERROR, ATT_Error, Attribute
from bumble.controller import Controller
from bumble.core import UUID, AdvertisingData
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue, Descriptor, Service
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

from firmware_bridge.bumble_backend import (
    BleakClientBumble,
    BleakScannerBumble,
    BumbleTransport,
    bumble_central_close,
)

pytestmark = pytest.mark.timeout(30)

SERVICE = "6d3f0001-8a5c-4b8e-9a1f-0c2e5d7b9a10"
NOTIFY_CHAR = "6d3f0002-8a5c-4b8e-9a1f-0c2e5d7b9a10"
RW_CHAR = "6d3f0003-8a5c-4b8e-9a1f-0c2e5d7b9a10"
LOCKED_CHAR = "6d3f0004-8a5c-4b8e-9a1f-0c2e5d7b9a10"
USER_DESC = "00002901-0000-1000-8000-00805f9b34fb"


class FixturePeripheral:
    """A bumble GATT server: one notify characteristic, one read/write, one refusing reads."""

    def __init__(self, link: LocalLink, *, name: str, address: str) -> None:
        self.controller = Controller(f"{name}-ctrl", link=link)
        self.device = Device(
            name=name, address=hci.Address(address),
            host=Host(self.controller, AsyncPipeSink(self.controller)),
        )
        self.written: list[bytes] = []
        self.rw_value = b"hello"
        self.notify_char = Characteristic(
            NOTIFY_CHAR, Characteristic.Properties.NOTIFY, Attribute.Permissions.READABLE, b""
        )
        self.rw_char = Characteristic(
            RW_CHAR,
            Characteristic.Properties.READ | Characteristic.Properties.WRITE
            | Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
            Attribute.Permissions.READABLE | Attribute.Permissions.WRITEABLE,
            CharacteristicValue(read=lambda _c: self.rw_value, write=self._on_write),
        )
        self.rw_char.descriptors = [
            Descriptor(USER_DESC, Attribute.Permissions.READABLE | Attribute.Permissions.WRITEABLE,
                       b"rw")
        ]
        self.locked_char = Characteristic(
            LOCKED_CHAR, Characteristic.Properties.READ, Attribute.Permissions.READABLE,
            CharacteristicValue(read=self._refuse_read),
        )
        chars = [self.notify_char, self.rw_char, self.locked_char]
        self.device.add_service(Service(SERVICE, chars))
        self.connection: Connection | None = None
        self.subscribed = asyncio.Event()
        self.device.on("connection", self._on_connection)
        self.notify_char.on("subscription", lambda *_a: self.subscribed.set())

    @staticmethod
    def _refuse_read(_connection: Connection) -> bytes:
        raise ATT_Error(ATT_READ_NOT_PERMITTED_ERROR)

    def _on_write(self, _connection: Connection, value: bytes) -> None:
        self.written.append(bytes(value))
        self.rw_value = bytes(value)

    def _on_connection(self, connection: Connection) -> None:
        self.connection = connection

    async def start(self) -> None:
        await self.device.power_on()
        adv = AdvertisingData([
            (AdvertisingData.FLAGS, bytes([0x06])),
            (AdvertisingData.COMPLETE_LOCAL_NAME, self.device.name.encode()),
            (AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
             bytes(UUID.from_16_bits(0x180D))),
            (AdvertisingData.MANUFACTURER_SPECIFIC_DATA, b"\xff\xffwm"),
        ])
        await self.device.start_advertising(
            advertising_data=bytes(adv), advertising_interval_min=20,
            advertising_interval_max=20, auto_restart=True,
        )


@pytest.fixture
async def rig():
    link = LocalLink()
    transport = BumbleTransport(link=link)
    peripheral = FixturePeripheral(link, name="fixture-1", address="C0:11:22:33:44:55")
    await peripheral.start()
    yield link, transport, peripheral
    await bumble_central_close(transport)
    await peripheral.device.power_off()


async def test_scan_finds_name_uuids_rssi(rig) -> None:
    _link, transport, _p = rig
    device = await BleakScanner.find_device_by_name(
        "fixture-1", timeout=5.0, backend=BleakScannerBumble, bumble=transport
    )
    assert device is not None
    assert device.address == "C0:11:22:33:44:55"
    async with BleakScanner(backend=BleakScannerBumble, bumble=transport,
                            service_uuids=["0000180d-0000-1000-8000-00805f9b34fb"]) as scanner:
        await asyncio.sleep(0.2)
        seen = scanner.discovered_devices_and_advertisement_data
    _dev, adv = seen["C0:11:22:33:44:55"]
    assert adv.local_name == "fixture-1"
    assert "0000180d-0000-1000-8000-00805f9b34fb" in adv.service_uuids
    assert adv.manufacturer_data == {0xFFFF: b"wm"}
    assert isinstance(adv.rssi, int)


async def test_scan_uuid_filter_excludes(rig) -> None:
    _link, transport, _p = rig
    async with BleakScanner(backend=BleakScannerBumble, bumble=transport,
                            service_uuids=[SERVICE]) as scanner:
        await asyncio.sleep(0.2)
        assert scanner.discovered_devices == []


async def test_connect_mtu_discover_read_write_notify(rig) -> None:
    _link, transport, peripheral = rig
    device = await BleakScanner.find_device_by_name(
        "fixture-1", timeout=5.0, backend=BleakScannerBumble, bumble=transport
    )
    assert device is not None
    async with BleakClient(device, backend=BleakClientBumble, bumble=transport, timeout=5.0) as c:
        assert c.is_connected
        assert c.mtu_size == 247
        service = c.services.get_service(SERVICE)
        assert service is not None
        assert {ch.uuid for ch in service.characteristics} == {NOTIFY_CHAR, RW_CHAR, LOCKED_CHAR}
        rw = c.services.get_characteristic(RW_CHAR)
        assert rw is not None
        assert set(rw.properties) == {"read", "write", "write-without-response"}
        assert rw.max_write_without_response_size == 244
        notify = c.services.get_characteristic(NOTIFY_CHAR)
        assert notify is not None
        assert notify.get_descriptor("00002902-0000-1000-8000-00805f9b34fb") is not None

        assert await c.read_gatt_char(RW_CHAR) == b"hello"
        await c.write_gatt_char(RW_CHAR, b"\x01\x02\x03", response=True)
        assert peripheral.written == [b"\x01\x02\x03"]
        assert await c.read_gatt_char(RW_CHAR) == b"\x01\x02\x03"
        await c.write_gatt_char(RW_CHAR, b"\x09", response=False)
        for _ in range(50):
            if len(peripheral.written) == 2:
                break
            await asyncio.sleep(0.01)
        assert peripheral.written[-1] == b"\x09"

        desc = rw.get_descriptor(USER_DESC)
        assert desc is not None
        assert await c.read_gatt_descriptor(desc) == b"rw"
        await c.write_gatt_descriptor(desc, b"RW")
        assert await c.read_gatt_descriptor(desc.handle) == b"RW"

        with pytest.raises(BleakGATTProtocolError) as refused:
            await c.read_gatt_char(LOCKED_CHAR)
        assert refused.value.code == ATT_READ_NOT_PERMITTED_ERROR

        received: asyncio.Queue[bytes] = asyncio.Queue()
        await c.start_notify(NOTIFY_CHAR, lambda _ch, data: received.put_nowait(bytes(data)))
        await asyncio.wait_for(peripheral.subscribed.wait(), 2.0)
        payload = bytes(range(200))  # > 20 bytes: truncated at the default MTU of 23
        await peripheral.device.notify_subscribers(peripheral.notify_char, payload)
        got = await asyncio.wait_for(received.get(), 2.0)
        assert got == payload

        await c.stop_notify(NOTIFY_CHAR)
        await asyncio.sleep(0.05)
        await peripheral.device.notify_subscribers(peripheral.notify_char, b"late")
        await asyncio.sleep(0.1)
        assert received.empty()
    assert not c.is_connected


async def test_mtu_configurable(rig) -> None:
    link, _t, _p = rig
    small = BumbleTransport(link=link, mtu=100, name="other-central")
    try:
        async with BleakClient("C0:11:22:33:44:55", backend=BleakClientBumble, bumble=small,
                               timeout=5.0) as c:
            assert c.mtu_size == 100
    finally:
        await bumble_central_close(small)


async def test_disconnected_callback_on_link_loss(rig) -> None:
    _link, transport, peripheral = rig
    lost = asyncio.Event()
    client = BleakClient("C0:11:22:33:44:55", disconnected_callback=lambda _c: lost.set(),
                         backend=BleakClientBumble, bumble=transport, timeout=5.0)
    await client.connect()
    assert peripheral.connection is not None
    await peripheral.connection.disconnect()
    await asyncio.wait_for(lost.wait(), 2.0)
    assert not client.is_connected
    with pytest.raises(BleakError):
        await client.read_gatt_char(RW_CHAR)
    await client.disconnect()  # awaiting the old client after loss is harmless


async def test_disconnect_by_us_does_not_call_callback(rig) -> None:
    _link, transport, _p = rig
    calls: list[object] = []
    client = BleakClient("C0:11:22:33:44:55", disconnected_callback=calls.append,
                         backend=BleakClientBumble, bumble=transport, timeout=5.0)
    await client.connect()
    await client.disconnect()
    await asyncio.sleep(0.05)
    assert calls == [] and not client.is_connected


async def test_connect_absent_peer_times_out_then_other_connects(rig) -> None:
    _link, transport, _p = rig
    absent = BleakClient("C0:99:99:99:99:99", backend=BleakClientBumble, bumble=transport,
                         timeout=0.5)
    with pytest.raises(BleakError, match="timed out"):
        await absent.connect()
    # The shared central must still connect to a present peer afterwards.
    async with BleakClient("C0:11:22:33:44:55", backend=BleakClientBumble, bumble=transport,
                           timeout=5.0) as c:
        assert c.is_connected


async def test_two_peripherals_at_once(rig) -> None:
    link, transport, _p1 = rig
    p2 = FixturePeripheral(link, name="fixture-2", address="C0:11:22:33:44:66")
    await p2.start()
    c1 = BleakClient("C0:11:22:33:44:55", backend=BleakClientBumble, bumble=transport, timeout=5)
    c2 = BleakClient("C0:11:22:33:44:66", backend=BleakClientBumble, bumble=transport, timeout=5)
    await asyncio.gather(c1.connect(), c2.connect())
    try:
        assert c1.is_connected and c2.is_connected
        await c2.write_gatt_char(RW_CHAR, b"two", response=True)
        assert await c1.read_gatt_char(RW_CHAR) == b"hello"
        assert await c2.read_gatt_char(RW_CHAR) == b"two"
    finally:
        await c1.disconnect()
        await c2.disconnect()
        await p2.device.power_off()


async def test_pair_not_implemented_and_missing_transport(rig) -> None:
    _link, transport, _p = rig
    async with BleakClient("C0:11:22:33:44:55", backend=BleakClientBumble, bumble=transport,
                           timeout=5.0) as c:
        with pytest.raises(NotImplementedError):
            await c.pair()
        with pytest.raises(NotImplementedError):
            await c.unpair()
    with pytest.raises(BleakError, match="BumbleTransport"):
        BleakClient("C0:11:22:33:44:55", backend=BleakClientBumble)
    with pytest.raises(ValueError, match="exactly one"):
        BumbleTransport()


async def test_bleak_retry_connector(rig) -> None:
    from bleak_retry_connector import establish_connection

    _link, transport, _p = rig
    device = await BleakScanner.find_device_by_name(
        "fixture-1", timeout=5.0, backend=BleakScannerBumble, bumble=transport
    )
    assert device is not None
    client = await establish_connection(
        BleakClient, device, "fixture-1", max_attempts=2, backend=BleakClientBumble,
        bumble=transport,
    )
    try:
        assert client.is_connected and client.mtu_size == 247
        assert await client.read_gatt_char(RW_CHAR) == b"hello"
    finally:
        await client.disconnect()
