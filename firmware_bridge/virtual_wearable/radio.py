"""A virtual radio for multi-process tests: linked bumble controllers behind HCI-over-TCP ports.

Like ``python -m bumble.apps.controllers``, each transport gets a virtual controller and all of
them share one :class:`bumble.link.LocalLink`, so a wearable attached to one port and a bridge
attached to another talk BLE to each other. One behaviour is added: when the host of a
controller goes away (its TCP client closes, e.g. the bridge process is killed), that
controller's connections are dropped after ``host_loss_s``, as a real gateway's are when its
host stack dies (the kernel closes the link, or the peer's supervision timeout expires). With
bumble's plain app the controller would keep the link up forever, and the wearable, still
"connected", would never advertise to the restarted bridge.

Example
-------
::

    python -m firmware_bridge.virtual_wearable.radio tcp-server:127.0.0.1:9001 \\
        tcp-server:127.0.0.1:9002
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence

from bumble import hci
from bumble.controller import Controller
from bumble.link import LocalLink
from bumble.transport import open_transport

__all__ = ["drop_connections", "main", "serve"]

logger = logging.getLogger(__name__)


def drop_connections(controller: Controller) -> int:
    """Disconnect every LE connection of ``controller`` (connection timeout); return how many.

    Example
    -------
    >>> drop_connections(Controller("C0", link=LocalLink()))
    0
    """
    handles = [c.handle for c in list(controller.le_connections.values())]
    for handle in handles:
        controller.on_hci_disconnect_command(hci.HCI_Disconnect_Command(
            connection_handle=handle, reason=hci.HCI_CONNECTION_TIMEOUT_ERROR))
    return len(handles)


def _host_attached(transport: object) -> bool | None:
    # bumble's TCP server sink holds the client's asyncio transport while one is connected.
    sink = getattr(transport, "sink", None)
    if sink is None or not hasattr(sink, "transport"):
        return None  # not a server transport: no way to tell
    return sink.transport is not None


async def serve(specs: Sequence[str], *, host_loss_s: float = 0.5,
                stop: asyncio.Event | None = None) -> None:
    """Run linked controllers on ``specs`` (bumble transport names) until ``stop`` is set."""
    if len(specs) < 2:
        raise ValueError(f"need at least two transports to link, got {list(specs)}")
    link = LocalLink()
    transports = [await open_transport(spec) for spec in specs]
    controllers = [Controller(f"C{i}", host_source=t.source, host_sink=t.sink, link=link)
                   for i, t in enumerate(transports)]
    attached = [False] * len(transports)
    lost_at: list[float | None] = [None] * len(transports)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        while not stop.is_set():
            for i, (transport, controller) in enumerate(zip(transports, controllers,
                                                            strict=True)):
                now_attached = _host_attached(transport)
                if now_attached is None:
                    continue
                if now_attached:
                    attached[i], lost_at[i] = True, None
                elif attached[i]:
                    lost_at[i] = lost_at[i] or loop.time()
                    if loop.time() - lost_at[i] >= host_loss_s:  # type: ignore[operator]
                        n = drop_connections(controller)
                        logger.info("host of %s went away: dropped %d connection(s)",
                                    specs[i], n)
                        attached[i], lost_at[i] = False, None
            await asyncio.sleep(0.1)
    finally:
        for t in transports:
            await t.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m firmware_bridge.virtual_wearable.radio",
                                description=__doc__.splitlines()[0])
    p.add_argument("transports", nargs="+", help="bumble transports, e.g. tcp-server:_:9001")
    p.add_argument("--host-loss", type=float, default=0.5, metavar="S",
                   help="drop a controller's links this long after its host went away")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(args.transports, host_loss_s=args.host_loss))


if __name__ == "__main__":
    main()
