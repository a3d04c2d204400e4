"""The ``wearemo`` command line: demo, serve, bridge, process, train, predict, export.

Example
-------
``wearemo demo --subjects 2 --summary out/demo-summary.json`` starts the API, two virtual
wearables replaying the shipped real excerpt and the BLE bridge, shows live states and writes a
JSON summary. ``wearemo train ../shared/data/stress-predict --out models/mine`` trains a model
and scores it leave-one-subject-out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from wearemo.batch import (
    DEFAULT_EXCERPT,
    featurize_dirs,
    labelled_windows,
    predict_rows,
    tracking_report,
)
from wearemo.datasets import Recording, load_recording
from wearemo.samples import ID_PATTERN, Channel

__all__ = ["app"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err_console = Console(stderr=True)  # messages, so stdout carries only what scripts capture


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"API process exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"API at {url} not ready after {timeout_s:.0f} s")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    data_dir: Annotated[Path | None, typer.Option(help="Where the embedded store lives.")] = None,
) -> None:
    """Run the HTTP API (ingest, states, OpenAPI docs at /docs)."""
    import uvicorn

    from wearemo.logs import configure_logging
    from wearemo.settings import get_settings

    if data_dir is not None:
        os.environ["WEAREMO_DATA_DIR"] = str(data_dir)
    try:
        settings = get_settings()
    except ValueError as exc:  # e.g. a weak WEAREMO_ADMIN_KEY: refused with a clear message
        console.print(f"[red]refusing to start:[/red] {exc}")
        raise typer.Exit(2) from exc
    configure_logging(settings.log_format, settings.log_level)
    # log_config=None keeps uvicorn's records on our handler; access lines come from wearemo's
    # own middleware (structured, with request ids), so uvicorn's are off.
    uvicorn.run("wearemo.api.app:create_app", factory=True, host=host, port=port,
                log_level="warning", log_config=None, access_log=False)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                      "help_option_names": []},
)
def bridge(ctx: typer.Context) -> None:
    """Run the BLE bridge (``python -m firmware_bridge run ...``; see ``--help`` there).

    The bridge is a separate program: it may run on a gateway next to the wearables while the
    API runs elsewhere, and ``wearemo`` itself never imports it.
    """
    args = list(ctx.args) or ["--help"]
    if args[0].startswith("-") and args[0] not in ("-h", "--help"):
        args = ["run", *args]  # `wearemo bridge --virtual 2 ...` means `... run --virtual 2`
    raise typer.Exit(subprocess.call([sys.executable, "-m", "firmware_bridge", *args]))


keys_app = typer.Typer(no_args_is_help=True, help="API keys in the data dir (offline).")
cohorts_app = typer.Typer(no_args_is_help=True, help="Cohorts of subjects for reader keys.")
subjects_app = typer.Typer(no_args_is_help=True, help="Pseudonymous subject ids.")
audit_app = typer.Typer(no_args_is_help=True, help="The hash-chained audit log.")
app.add_typer(keys_app, name="keys")
app.add_typer(cohorts_app, name="cohorts")
app.add_typer(subjects_app, name="subjects")
app.add_typer(audit_app, name="audit")

DataDir = Annotated[Path | None, typer.Option(
    help="Service data dir (default: WEAREMO_DATA_DIR, else out/data).")]


def _auth_settings(data_dir: Path | None) -> Any:
    """The settings (environment, with ``--data-dir`` if given); exit 2 when they are bad."""
    from wearemo.settings import Settings

    try:
        return Settings(data_dir=data_dir) if data_dir is not None else Settings()
    except ValueError as exc:  # e.g. a weak WEAREMO_ADMIN_KEY in the environment
        console.print(f"[red]bad settings:[/red] {exc}")
        raise typer.Exit(2) from exc


def _auth_path(data_dir: Path | None) -> Path:
    path: Path = _auth_settings(data_dir).resolved_auth_path()
    return path


def _open_audit(data_dir: Path | None, **kw: Any) -> Any:
    """The data dir's audit log with its key (see ``open_audit_log``); exit 2 with the reason
    when the key is missing or wrong, or the log must be migrated first."""
    from wearemo.api.audit import AuditKeyError, open_audit_log

    try:
        return open_audit_log(_auth_settings(data_dir), **kw)
    except (AuditKeyError, ValueError) as exc:
        console.print(f"[red]audit log:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc


@contextlib.contextmanager
def _admin(data_dir: Path | None, action: str, subject: str | None = None) -> Any:
    """The key store of the data dir, with the CLI action appended to the audit log (naming
    ``subject`` when the action concerns one)."""
    from wearemo.api.audit import AuditEntry
    from wearemo.api.keystore import KeyStore, KeyStoreError, UnknownError

    path = _auth_path(data_dir)
    detail: list[str] = []
    with KeyStore(path) as keys, _open_audit(data_dir) as log:
        try:
            yield keys, detail
        except (KeyStoreError, UnknownError) as exc:
            log.append(AuditEntry.new("cli", "admin", f"cli {action}", subject, 1, str(exc)))
            console.print(f"[red]{action}:[/red] {exc}")
            raise typer.Exit(2) from exc
        for d in detail or [""]:
            log.append(AuditEntry.new("cli", "admin", f"cli {action}", subject, 0, d))


def _duration_ns(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value, unit = (float(text[:-1]), text[-1]) if text[-1:] in units else (float(text), "s")
        if value <= 0:
            raise ValueError
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected a positive duration like 3600, 12h or "
                                 "30d") from None
    return int(value * units[unit] * 1e9)


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="device, reader or admin.")],
    subject: Annotated[list[str] | None, typer.Option(
        help="Subject a device key may write and read (repeat).")] = None,
    cohort: Annotated[list[str] | None, typer.Option(
        help="Cohort a reader key reads (repeat; created if missing).")] = None,
    name: Annotated[str, typer.Option(help="A label for people.")] = "",
    expires_in: Annotated[str | None, typer.Option(help="Lifetime, e.g. 3600, 12h, 30d.")]
    = None,
    data_dir: DataDir = None,
) -> None:
    """Create an API key and print it (the only time the secret is shown)."""
    from wearemo.api.keystore import ROLES

    if role not in ROLES:
        raise typer.BadParameter(f"--role must be one of {list(ROLES)}, got {role!r}")
    if cohort and role != "reader":
        raise typer.BadParameter("--cohort is for reader keys (device keys take --subject)")
    expires = None if expires_in is None else time.time_ns() + _duration_ns(expires_in)
    with _admin(data_dir, "keys create") as (keys, detail):
        created = keys.create_key(role, subjects=subject or [], name=name,  # type: ignore[arg-type]
                                  expires_ns=expires)
        existing = {c.name for c in keys.list_cohorts()}
        for c in cohort or []:
            if c not in existing:
                keys.create_cohort(c)
            keys.grant_cohort(c, created.info.key_id)
        detail.append(f"created key {created.info.key_id} ({role})")
    err_console.print(f"key {created.info.key_id} ({role}); send it as `Authorization: Bearer "
                  "<key>`; it is not shown again:", highlight=False, soft_wrap=True)
    print(created.secret)


@keys_app.command("list")
def keys_list(data_dir: DataDir = None) -> None:
    """List keys (never their secrets)."""
    table = Table("key id", "role", "name", "active", "expires", "subjects", "cohorts")
    with _admin(data_dir, "keys list") as (keys, _):
        for k in keys.list_keys():
            exp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(k.expires_ns / 1e9)) \
                if k.expires_ns else "-"
            table.add_row(k.key_id, k.role, k.name, "yes" if k.active() else "no", exp,
                          ", ".join(k.subjects), ", ".join(k.cohorts))
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id.")],
                data_dir: DataDir = None) -> None:
    """Revoke a key (refused by a running API from its next request)."""
    with _admin(data_dir, "keys revoke") as (keys, detail):
        keys.revoke(key_id)
        detail.append(f"revoked key {key_id}")
    console.print(f"key {key_id} revoked")


@cohorts_app.command("create")
def cohorts_create(name: Annotated[str, typer.Argument()],
                   subject: Annotated[list[str] | None, typer.Option(help="Repeat.")] = None,
                   data_dir: DataDir = None) -> None:
    """Create a cohort."""
    with _admin(data_dir, "cohorts create") as (keys, detail):
        keys.create_cohort(name, subjects=subject or [])
        detail.append(f"created cohort {name}")
    console.print(f"cohort {name} created")


@cohorts_app.command("add")
def cohorts_add(name: Annotated[str, typer.Argument()],
                subjects: Annotated[list[str], typer.Argument(help="Subject ids.")],
                data_dir: DataDir = None) -> None:
    """Add subjects to a cohort."""
    with _admin(data_dir, "cohorts add") as (keys, detail):
        keys.add_subjects(name, subjects)
        detail.append(f"cohort {name}: added {', '.join(subjects)}"[:500])


@cohorts_app.command("remove")
def cohorts_remove(name: Annotated[str, typer.Argument()],
                   subject: Annotated[str, typer.Argument()], data_dir: DataDir = None) -> None:
    """Remove a subject from a cohort."""
    with _admin(data_dir, "cohorts remove") as (keys, detail):
        keys.remove_subject(name, subject)
        detail.append(f"cohort {name}: removed {subject}")


@cohorts_app.command("grant")
def cohorts_grant(name: Annotated[str, typer.Argument()],
                  key_id: Annotated[str, typer.Argument()], data_dir: DataDir = None) -> None:
    """Let a reader key read a cohort."""
    with _admin(data_dir, "cohorts grant") as (keys, detail):
        keys.grant_cohort(name, key_id)
        detail.append(f"cohort {name}: granted to key {key_id}")


@cohorts_app.command("list")
def cohorts_list(data_dir: DataDir = None) -> None:
    """List cohorts, their subjects and reader keys."""
    table = Table("cohort", "subjects", "reader keys")
    with _admin(data_dir, "cohorts list") as (keys, _):
        for c in keys.list_cohorts():
            table.add_row(c.name, ", ".join(c.subjects), ", ".join(c.keys))
    console.print(table)


@subjects_app.command("mint")
def subjects_mint(count: Annotated[int, typer.Argument()] = 1,
                  cohort: Annotated[str | None, typer.Option(help="Add them to it.")] = None,
                  data_dir: DataDir = None) -> None:
    """Mint random pseudonymous subject ids (one per line)."""
    with _admin(data_dir, "subjects mint") as (keys, detail):
        if cohort is not None:
            keys.cohort(cohort)
        minted = keys.mint_subjects(count)
        if cohort is not None:
            keys.add_subjects(cohort, minted)
        detail.append(f"minted {len(minted)} subject ids")
    print("\n".join(minted))


@subjects_app.command("erase")
def subjects_erase(
    subject: Annotated[str, typer.Argument(help="The pseudonymous subject id.")],
    data_dir: DataDir = None,
) -> None:
    """Erase a subject offline, as ``DELETE /v1/admin/subjects/ID`` does: everything in the
    store (samples, batches, windows, states, calibration, processing queue), its alert rules,
    alerts and deliveries, and its cohort memberships and key grants, with the SQLite files'
    write-ahead logs truncated; the audit log records the erasure. Refused while a service
    runs on the data dir (erase through its API then); exit code 1 when nothing of the
    subject was found."""
    import re

    from wearemo.alerts import AlertDB
    from wearemo.store import open_store
    from wearemo.store.lock import DataDirLock

    if not re.fullmatch(ID_PATTERN, subject):
        raise typer.BadParameter(f"{subject!r} is not a subject id (letters, digits, '._:-')")
    settings = _auth_settings(data_dir)
    lock = DataDirLock(settings.data_dir).try_exclusive()
    if lock is None:
        pid = DataDirLock(settings.data_dir).holder_pid()
        err_console.print(
            f"[red]subjects erase:[/red] a wearemo service is running on {settings.data_dir}"
            f"{f' (pid {pid})' if pid else ''}; it holds this subject's state in memory, so "
            f"erase through it: DELETE /v1/admin/subjects/{subject} (or stop it first)",
            highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    try:
        with _admin(settings.data_dir, "subjects erase", subject) as (keys, detail):
            # As the API erase: deleted rows are overwritten (secure_delete) and each file's
            # write-ahead log truncated, so no copy stays on disk.
            removed: dict[str, int] = {}
            truncated = []
            db = settings.resolved_sqlite_path()
            if settings.store != "sqlite" or db.exists():  # opening would create an empty one
                store = open_store(settings)
                try:
                    removed = store.erase_subject(subject)
                    truncated.append(store.truncate_wal())
                finally:
                    store.close()
            alert_rows = 0
            if settings.resolved_alerts_path().exists():
                with contextlib.closing(AlertDB(settings.resolved_alerts_path())) as alerts:
                    alert_rows = alerts.erase_subject(subject)
                    truncated.append(alerts.truncate_wal())
            grants = keys.forget_subject(subject)
            truncated.append(keys.truncate_wal())
            detail.append(f"erased: {removed}, {alert_rows} alert rows, {grants} grants"
                          + ("" if all(truncated) else "; write-ahead log not truncated yet"))
    finally:
        lock.release()
    print(json.dumps({"subject_id": subject, "removed": removed, "alert_rows": alert_rows,
                      "grants": grants, "wal_truncated": all(truncated)}))
    if not any(removed.values()) and not alert_rows and not grants:
        err_console.print(f"nothing of subject {subject!r} was found in {settings.data_dir}",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@audit_app.command("verify")
def audit_verify(data_dir: DataDir = None) -> None:
    """Check the audit log's keyed chain; exit code 1 at the first tampered entry (or when
    the log is still in the old unkeyed format), 2 when the audit key is missing."""
    from wearemo.api.audit import AuditKeyError, AuditLog
    from wearemo.api.auth import load_audit_key

    settings = _auth_settings(data_dir)
    try:
        key, _ = load_audit_key(settings)  # never made here: a new key verifies nothing
    except ValueError as exc:
        console.print(f"[red]audit key:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    with AuditLog(settings.resolved_auth_path(), key=key) as log:
        try:
            report = log.verify()
        except AuditKeyError as exc:
            console.print(f"[red]audit log:[/red] {exc}: set WEAREMO_AUDIT_KEY or restore "
                          "data_dir/audit.key", highlight=False)
            raise typer.Exit(2) from exc
    if report.ok and report.unkeyed:
        console.print(f"[red]audit log unkeyed:[/red] its {report.entries} entries are in the "
                      "old format (a plain SHA-256 chain, intact), which anyone who can write "
                      "the file can recompute after deleting entries. Seal it under a key: "
                      "`wearemo audit migrate` (or start the service once)", highlight=False)
        raise typer.Exit(1)
    if report.ok:
        keyed = (f", keyed from entry {report.keyed_from_seq}"
                 if report.keyed_from_seq and report.keyed_from_seq > 1 else "")
        console.print(f"audit log intact: {report.entries} entries{keyed}, head "
                      f"{report.head_sha256}", highlight=False)
        return
    console.print(f"[red]audit log tampered[/red] at entry {report.broken_seq}: "
                  f"{report.reason} ({report.entries} entries before it intact)",
                  highlight=False)
    raise typer.Exit(1)


@audit_app.command("migrate")
def audit_migrate(
    accept_broken: Annotated[bool, typer.Option(
        help="Seal an old log whose unkeyed chain is already broken, as it is.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Seal a log of an older release (unkeyed SHA-256 chain) under the audit key, after
    checking its chain; the service does this itself when it generates the key."""
    with _open_audit(data_dir, migrate=True, accept_broken=accept_broken) as log:
        sealed = log.sealed
        n, _ = log.counts()
    if sealed is None:
        console.print(f"nothing to migrate: the audit log ({n} entries) is already keyed or "
                      "empty")
        return
    console.print(f"sealed {sealed.seq - 1} entries of the old unkeyed chain under the audit "
                  f"key (entry {sealed.seq}: {sealed.detail})", highlight=False)


@audit_app.command("show")
def audit_show(subject: Annotated[str | None, typer.Option(help="Only this subject.")] = None,
               after: Annotated[int, typer.Option(help="Entries after this seq.")] = 0,
               limit: Annotated[int, typer.Option()] = 100, data_dir: DataDir = None) -> None:
    """Print audit entries as JSON lines."""
    from dataclasses import asdict

    from wearemo.api.audit import AuditLog

    with AuditLog(_auth_path(data_dir)) as log:  # reading needs no key
        for e in log.entries(after_seq=after, subject_id=subject, limit=limit):
            print(json.dumps(asdict(e)))


def _states_table(rows: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="wearemo live states (window end, UTC of the recording)")
    for col in ("subject", "end", "label", "state", "p", "why withheld", "samples"):
        table.add_column(col, no_wrap=True, overflow="ellipsis", max_width=38)
    for subject, r in sorted(rows.items()):
        state = r.get("state") or {}
        colour = {"stress": "red", "non_stress": "green"}.get(state.get("state", ""), "yellow")
        p = state.get("p_stress")
        end = state.get("window_end_ns")
        table.add_row(
            subject,
            time.strftime("%H:%M:%S", time.gmtime(end / 1e9)) if end else "-",
            r.get("label") or "-",
            f"[{colour}]{state.get('state', 'waiting')}[/{colour}]",
            f"{p:.2f}" if p is not None else "-",
            state.get("reason") or "",
            str(r.get("samples", 0)),
        )
    return table


def _demo_keys(data_dir: Path, subjects: list[str], *, per_subject: bool
               ) -> tuple[list[str], str]:
    """Keys of the demo, created offline in its data dir: device keys for the bridges (one
    for all subjects, or one per subject) and a reader key on a cohort of them for the live
    table. Returns (device keys, reader key)."""
    from wearemo.api.audit import AuditEntry
    from wearemo.api.keystore import KeyStore

    path = _auth_path(data_dir)
    with KeyStore(path) as keys, _open_audit(data_dir) as log:
        groups = [[s] for s in subjects] if per_subject else [subjects]
        devices = [keys.create_key("device", subjects=g, name="demo bridge") for g in groups]
        keys.create_cohort("demo", subjects=subjects)
        reader = keys.create_key("reader", name="demo live table")
        keys.grant_cohort("demo", reader.info.key_id)
        log.extend([AuditEntry.new("cli", "admin", "cli demo", None, 0,
                                   f"created key {k.info.key_id} ({k.info.role})")
                    for k in (*devices, reader)])
    return [d.secret for d in devices], reader.secret


@app.command()
def demo(
    subjects: Annotated[int, typer.Option(help="Virtual wearables (one subject each).")] = 1,
    duration: Annotated[
        float | None, typer.Option(help="Device seconds to replay (default: whole source).")
    ] = None,
    speed: Annotated[float, typer.Option(help="Replay speed (device time / wall time).")] = 10.0,
    source: Annotated[
        Path | None, typer.Option(help="Recording folder to replay, or 'sim'.")
    ] = None,
    summary: Annotated[Path | None, typer.Option(help="Write the JSON summary here.")] = None,
    workdir: Annotated[Path, typer.Option(help="Scratch folder (store, spool).")] = Path(
        "out/demo"
    ),
    chaos: Annotated[bool, typer.Option(
        "--chaos", help="Wearables, bridges and API as separate processes, with link drops, "
        "an API outage and a bridge kill -9; the summary counts lost and duplicate samples "
        "against the recording.")] = False,
) -> None:
    """API + N virtual BLE wearables + the bridge, live states in the terminal, JSON summary."""
    src = str(source) if source is not None else str(DEFAULT_EXCERPT)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    if chaos:
        if src == "sim" or not Path(src).is_dir():
            console.print("[red]--chaos replays a recording folder[/red] (not 'sim')")
            raise typer.Exit(2)
        result = _chaos_demo(subjects=subjects, src=src, duration=duration, speed=speed,
                             workdir=workdir)
        console.print_json(data=result)
        if summary is not None:
            summary.parent.mkdir(parents=True, exist_ok=True)
            summary.write_text(json.dumps(result, indent=2) + "\n")
            console.print(f"summary written to {summary}")
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # The API shares the terminal with the live table: plain text, warnings only.
    env = {"WEAREMO_LOG_FORMAT": "plain", "WEAREMO_LOG_LEVEL": "WARNING", **os.environ,
           "WEAREMO_DATA_DIR": str(workdir / "data")}
    [device_key], reader_key = _demo_keys(
        workdir / "data", [f"demo-{k + 1:02d}" for k in range(subjects)], per_subject=False)
    api = subprocess.Popen(
        [sys.executable, "-m", "wearemo", "serve", "--port", str(port)], env=env
    )
    report_path = workdir / "bridge-report.json"
    bridge_proc: subprocess.Popen[bytes] | None = None
    try:
        _wait_ready(url, api)
        cmd = [
            sys.executable, "-m", "firmware_bridge", "run", "--api", url,
            "--virtual", str(subjects), "--source", src, "--speed", str(speed),
            "--spool", str(workdir / "spool.sqlite"), "--report", str(report_path),
        ]
        if duration is not None:
            cmd += ["--duration", str(duration)]
        bridge_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                       env={**os.environ, "WEAREMO_API_KEY": device_key})
        labels = _labels_of(src)
        rows: dict[str, dict[str, Any]] = {}
        with httpx.Client(base_url=url, timeout=10.0,
                          headers={"Authorization": f"Bearer {reader_key}"}) as client, Live(
            _states_table(rows), console=console, refresh_per_second=2
        ) as live:
            while bridge_proc.poll() is None:
                _poll(client, rows, labels)
                live.update(_states_table(rows))
                time.sleep(1.0)
            _poll(client, rows, labels)
            live.update(_states_table(rows))
            if bridge_proc.returncode != 0:
                raise RuntimeError(f"bridge exited with code {bridge_proc.returncode}")
            result = _summarise(client, json.loads(report_path.read_text()), src)
    finally:
        for proc in (bridge_proc, api):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    console.print_json(data=result)
    if summary is not None:
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"summary written to {summary}")


class _Procs:
    """Child processes of the chaos demo, stopped together."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[subprocess.Popen[bytes]] = []

    def spawn(self, args: list[str], log: str, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        with (self.workdir / log).open("ab") as f:
            proc = subprocess.Popen([sys.executable, "-m", *args], stdout=f, stderr=f, env=env)
        self.running.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.running:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _chaos_demo(*, subjects: int, src: str, duration: float | None, speed: float,
                workdir: Path) -> dict[str, Any]:
    """The demo as separate processes (virtual radio, one wearable and one bridge per subject,
    the API) with faults: each wearable drops its link 3 times, the API is down for a fifth
    of the run (at most 60 s), the first bridge is killed with SIGKILL and restarted. Samples
    are counted against the recording itself: ``lost_samples`` (in the replayed span but not
    stored) and ``duplicate_samples`` (stored more than once)."""
    from wearemo.store import SQLiteStore

    rec = load_recording(src)
    span_s = (rec.end_ns - rec.start_ns) / 1e9 + 1.0
    replay_s = min(duration, span_s) if duration is not None else span_s
    wall_s = replay_s / speed
    procs = _Procs(workdir)
    ports = [_free_port() for _ in range(2 * subjects)]
    procs.spawn(["firmware_bridge.virtual_wearable.radio",
                 *(f"tcp-server:127.0.0.1:{p}" for p in ports)], "radio.log")
    api_port = _free_port()
    url = f"http://127.0.0.1:{api_port}"
    env = {"WEAREMO_LOG_FORMAT": "plain", **os.environ,
           "WEAREMO_DATA_DIR": str(workdir / "data")}
    device_keys, reader_key = _demo_keys(
        workdir / "data", [f"demo-{k + 1:02d}" for k in range(subjects)], per_subject=True)

    def start_api() -> subprocess.Popen[bytes]:
        proc = procs.spawn(["wearemo", "serve", "--port", str(api_port)], "api.log", env)
        _wait_ready(url, proc)
        return proc

    def start_bridge(k: int) -> subprocess.Popen[bytes]:
        return procs.spawn([
            "firmware_bridge", "run", "--api", url, "--name", f"wearemo-vw-{k + 1:02d}",
            "--subject", f"demo-{k + 1:02d}", "--device-id", f"vw-{k + 1:02d}",
            "--bumble-transport", f"tcp-client:127.0.0.1:{ports[subjects + k]}",
            "--spool", str(workdir / f"spool-{k + 1:02d}.sqlite"), "--drain-timeout", "120",
            "--report", str(workdir / f"bridge-{k + 1:02d}.json")], f"bridge-{k + 1:02d}.log",
            {**os.environ, "WEAREMO_API_KEY": device_keys[k]})

    labels = _labels_of(src)
    rows: dict[str, dict[str, Any]] = {}
    try:
        api = start_api()
        wearables = [procs.spawn([
            "firmware_bridge.virtual_wearable", "--transport", f"tcp-client:127.0.0.1:{ports[k]}",
            "--source", src, "--duration", str(replay_s), "--speed", str(speed),
            "--name", f"wearemo-vw-{k + 1:02d}", "--drops", "3", "--chaos-seed", str(k),
            "--linger", "10", "--report", str(workdir / f"wearable-{k + 1:02d}.json")],
            f"wearable-{k + 1:02d}.log") for k in range(subjects)]
        bridges = [start_bridge(k) for k in range(subjects)]
        t0 = time.monotonic()
        outage = (0.3 * wall_s, 0.3 * wall_s + min(60.0, 0.2 * wall_s))
        events = sorted([(outage[0], "api-down"), (outage[1], "api-up"),
                         (0.6 * wall_s, "kill-bridge")])
        faults: list[str] = []
        with httpx.Client(base_url=url, timeout=10.0,
                          headers={"Authorization": f"Bearer {reader_key}"}) as client, Live(
            _states_table(rows), console=console, refresh_per_second=2
        ) as live:
            while any(w.poll() is None for w in wearables):
                now = time.monotonic() - t0
                while events and events[0][0] <= now:
                    _, what = events.pop(0)
                    if what == "api-down":
                        api.send_signal(signal.SIGTERM)
                        api.wait(timeout=30)
                    elif what == "api-up":
                        api = start_api()
                    else:
                        bridges[0].kill()
                        bridges[0].wait(timeout=10)
                        bridges[0] = start_bridge(0)
                    faults.append(f"{what} at {now:.0f} s")
                if api.poll() is None:
                    with contextlib.suppress(httpx.HTTPError):
                        _poll(client, rows, labels)
                    live.update(_states_table(rows))
                time.sleep(1.0)
        for b in bridges:  # the wearables are done: each bridge drains its spool and stops
            b.send_signal(signal.SIGTERM)
        for b in bridges:
            b.wait(timeout=180)
        api.send_signal(signal.SIGTERM)
        api.wait(timeout=30)
    finally:
        procs.stop_all()
    end_ns = rec.start_ns + int(replay_s * 1e9)
    out: dict[str, Any] = {"chaos": {"faults": faults, "link_drops_per_wearable": 3},
                           "subjects": {}}
    with SQLiteStore(workdir / "data" / "wearemo.sqlite3") as store:
        for k in range(subjects):
            subject = f"demo-{k + 1:02d}"
            stored = store.batches(subject, limit=10**7)
            wear = json.loads((workdir / f"wearable-{k + 1:02d}.json").read_text())
            entry: dict[str, Any] = {"samples": {}, "lost_samples": {}, "duplicate_samples": {},
                                     "link_drops": len(wear["link_drops_s"])}
            for ch, data in rec.channels.items():
                times = [t for b in stored if b.channel is ch for t in b.times_ns().tolist()]
                expected = int(((data.times_ns >= rec.start_ns) & (data.times_ns < end_ns)).sum())
                unique = len(set(times))
                entry["samples"][ch.value] = len(times)
                entry["duplicate_samples"][ch.value] = len(times) - unique
                entry["lost_samples"][ch.value] = max(0, expected - unique)
            states = store.states(subject, limit=10**6)
            entry["windows"] = len(store.windows(subject, limit=10**6))
            entry["states"] = {s: sum(x.state == s for x in states)
                               for s in ("stress", "non_stress", "withheld")}
            out["subjects"][subject] = entry
    out["note"] = ("hr/rr travel over the standard Heart Rate Service, which cannot resume: "
                   "beats notified while no bridge listened (the kill, link drops) are lost by "
                   "protocol; every other channel resumes by sequence number")
    return out


def _labels_of(src: str) -> Recording | None:
    """The replayed recording's labels (None for a simulation or an unlabelled folder)."""
    folder = Path(src)
    if not (folder / "labels.csv").is_file():
        return None
    return load_recording(folder, channels=[Channel.EDA])


def _poll(
    client: httpx.Client, rows: dict[str, dict[str, Any]], labels: Recording | None
) -> None:
    resp = client.get("/v1/subjects")
    if resp.status_code != 200:
        return
    for subject in resp.json():
        row = rows.setdefault(subject, {})
        s = client.get(f"/v1/subjects/{subject}")
        if s.status_code == 200:
            row["samples"] = sum(s.json().get("samples", {}).values())
        st = client.get(f"/v1/subjects/{subject}/state")
        if st.status_code == 200:
            state = row["state"] = st.json()
            seg = None
            if labels is not None:
                seg = labels.window_label(state["window_start_ns"], state["window_end_ns"])
            row["label"] = f"{seg.label} ({seg.task})" if seg else None


def _summarise(client: httpx.Client, report: dict[str, Any], src: str) -> dict[str, Any]:
    out: dict[str, Any] = {"subjects": {}, "store_rows": 0}
    for subject, bridge_info in sorted(report["subjects"].items()):
        info = client.get(f"/v1/subjects/{subject}").json()
        states = client.get(f"/v1/subjects/{subject}/states", params={"limit": 100000}).json()
        sent = bridge_info["sent"]
        stored = info.get("samples", {})
        lost = sum(max(0, n - stored.get(ch, 0)) for ch, n in sent.items())
        counts = {"stress": 0, "non_stress": 0, "withheld": 0}
        for s in states:
            counts[s["state"]] += 1
        entry: dict[str, Any] = {
            "samples": stored,
            "sent": sent,
            "lost_samples": lost,
            "windows": info.get("windows", 0),
            "states": counts,
        }
        tracking = tracking_report(states, Path(src))
        if tracking is not None:
            entry["tracking"] = tracking
        out["subjects"][subject] = entry
        out["store_rows"] += info.get("batches", 0) + info.get("windows", 0) + len(states)
    return out


#: Table formats of batch outputs, by the ``--out`` file's suffix.
TABLE_FORMATS = {".parquet": "parquet", ".csv": "csv"}

#: Exit code of a batch command that skipped recordings it could not read; the others'
#: outputs are written. 2 means nothing was done (bad arguments, no readable recording).
EXIT_SKIPPED = 3


def _say(kind: str, style: str, message: str) -> None:
    """One line on stderr, never wrapped, never read as markup (messages quote file tokens)."""
    from rich.text import Text

    err_console.print(Text.assemble((f"{kind}: ", f"bold {style}"), message), soft_wrap=True,
                      highlight=False)


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Say ``message`` as a one-line error; ``raise _fail(...)`` exits with ``code``."""
    _say("error", "red", " ".join(message.split()))
    return typer.Exit(code)


def _table_format(out: Path, option: str = "--out") -> str:
    fmt = TABLE_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise _fail(f"{option} {out}: cannot tell the table format from "
                    f"{out.suffix or 'a name without a suffix'!r}; name it "
                    f"{' or '.join(TABLE_FORMATS)}")
    return fmt


def _write_table(frame: Any, out: Path, fmt: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")  # never a half-written file at out
    if fmt == "csv":
        frame.to_csv(tmp, index=False)
    else:
        frame.to_parquet(tmp, index=False)
    tmp.replace(out)


def _recording_count(recordings: Path) -> int:
    """How many recording folders ``recordings`` holds; a one-line error if none."""
    from wearemo.datasets import find_recordings

    try:
        return len(find_recordings(recordings))
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _report_issues(issues: list[Any], total: int) -> int:
    """Print warnings and skipped recordings, one line each, then the summary; returns the
    exit code (0, or :data:`EXIT_SKIPPED`); exits 2 when no recording could be read."""
    for issue in issues:
        if issue.skipped:
            _say("skipped", "red", issue.message)
        else:
            _say("warning", "yellow", issue.message)
    skipped = [i.folder.name for i in issues if i.skipped]
    if not skipped:
        return 0
    if len(skipped) >= total:
        raise _fail(f"none of the {total} recordings could be read; nothing written")
    _say("summary", "red", f"{len(skipped)} of {total} recordings skipped ({', '.join(skipped)}); "
         f"the other {total - len(skipped)} were processed; exit code {EXIT_SKIPPED}")
    return EXIT_SKIPPED


@app.command()
def process(
    recordings: Annotated[Path, typer.Argument(help="Recording folder or folder of them.")],
    out: Annotated[Path, typer.Option(help="Output table: .parquet or .csv.")],
    window: Annotated[float, typer.Option(help="Window length, s.")] = 60.0,
    step: Annotated[float, typer.Option(help="Window step, s.")] = 5.0,
    jobs: Annotated[int, typer.Option(help="Worker processes.")] = 2,
) -> None:
    """Featurise recordings (the same incremental code as live streaming) into a table.

    A recording that cannot be read is skipped and named; the others are written and the exit
    code is 3. No recording, or none readable: exit code 2, nothing written.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    fmt = _table_format(out)
    total = _recording_count(recordings)
    issues: list[Any] = []
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        tasks: dict[str, Any] = {}

        def advance(name: str, fraction: float) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=1.0)
            bar.update(tasks[name], completed=fraction)

        frame = featurize_dirs(recordings, window_s=window, step_s=step, jobs=jobs,
                               on_progress=advance, on_issue=issues.append)
    code = _report_issues(issues, total)
    if frame.empty:
        _say("warning", "yellow", f"no window: every recording is shorter than one "
             f"{window:g}-s window")
    _write_table(frame, out, fmt)
    console.print(f"{len(frame)} windows → {out}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


Target = Annotated[str, typer.Option(
    help="What to learn: stress (label == stress), affect (the label column's classes), task "
    "(the task column's classes) or valence (the valence ratings, high/low).")]
Midpoint = Annotated[float, typer.Option(
    help="Valence ratings above it are high, below it low (9-point SAM: 5).")]


def _loso_with_progress(data: list[Any], *, target: str, seed: int, jobs: int,
                        valence_midpoint: float) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from wearemo.model.train import loso_evaluate

    with Progress(TextColumn("leave-one-subject-out"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("loso", total=len(data))
        return loso_evaluate(data, target=target, seed=seed, n_jobs=jobs,
                             valence_midpoint=valence_midpoint,
                             on_fold=lambda _s: bar.advance(task))


def _data(recordings: Path, features: Path | None, jobs: int
          ) -> tuple[list[Any], str, list[Any]]:
    """Labelled windows of the readable recordings, the data hash, and the skipped ones."""
    if features is not None and features.suffix.lower() != ".parquet":
        raise _fail(f"--features {features}: the feature cache is a .parquet file")
    total = _recording_count(recordings)
    issues: list[Any] = []
    with console.status("featurising"):
        data, data_hash = labelled_windows(recordings, cache=features, jobs=jobs,
                                           on_issue=issues.append)
    _report_issues(issues, total)
    console.print(f"{len(data)} subjects, {sum(len(d.windows) for d in data)} windows")
    return data, data_hash, [i for i in issues if i.skipped]


@app.command()
def train(
    recordings: Annotated[Path, typer.Argument(help="Folder of labelled recordings.")],
    out: Annotated[Path, typer.Option(help="Model artifact folder to write.")],
    target: Target = "stress",
    features: Annotated[
        Path | None, typer.Option(help="Feature cache (.parquet) to reuse or create.")
    ] = None,
    jobs: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    valence_midpoint: Midpoint = 5.0,
) -> None:
    """Train a state model, score it leave-one-subject-out, write artifact + manifest + card."""
    from wearemo.model.card import model_card
    from wearemo.model.train import fit_model

    data, data_hash, skipped = _data(recordings, features, jobs)
    try:
        report = _loso_with_progress(data, target=target, seed=seed, jobs=jobs,
                                     valence_midpoint=valence_midpoint)
        loso = report.summary()
        console.print_json(data=loso["pooled"])
        with console.status("fitting the model on every subject"):
            model = fit_model(data, target=target, seed=seed, valence_midpoint=valence_midpoint)
    except ValueError as exc:
        raise _fail(f"cannot train: {exc}") from None
    model.manifest.update({"data_hash": data_hash, "data": str(recordings), "loso": loso,
                           "withheld_windows": report.withheld})
    if skipped:  # said in the artifact too: the model was trained without them
        model.manifest["skipped_recordings"] = {i.folder.name: i.message for i in skipped}
    # Content fingerprints of the training recordings: `evaluate` recognises them later
    # whatever their folders are called (and tells another dataset's "S02" from this one's).
    from wearemo.batch import manifest_fingerprints, recording_fingerprints

    model.manifest["training_fingerprints"] = manifest_fingerprints(recording_fingerprints(
        recordings, subjects=model.manifest["training_subjects"]))
    model.save(out, card=None)
    (out / "MODEL_CARD.md").write_text(model_card(model.manifest))
    (out / "loso_predictions.json").write_text(json.dumps(report.predictions) + "\n")
    console.print(f"model {model.version} → {out}", soft_wrap=True, highlight=False)
    raise typer.Exit(EXIT_SKIPPED if skipped else 0)


@app.command()
def evaluate(
    recordings: Annotated[Path, typer.Argument(help="Folder of labelled recordings.")],
    report: Annotated[Path, typer.Option(help="JSON report to write (+ .md and plots beside).")],
    model: Annotated[str, typer.Option(help="'default' or an artifact folder (not with --loso).")]
    = "default",
    loso: Annotated[bool, typer.Option(
        "--loso", help="Train and test leave-one-subject-out on the recordings.")] = False,
    target: Target = "stress",
    features: Annotated[
        Path | None, typer.Option(help="Feature cache (.parquet) to reuse or create.")
    ] = None,
    jobs: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    seed: Annotated[int, typer.Option(help="Random seed (with --loso).")] = 0,
    valence_midpoint: Midpoint = 5.0,
) -> None:
    """Score a model on labelled recordings: LOSO (--loso) or a fixed model.

    With --loso, --target says what to learn; a fixed model evaluates its own target. A fixed
    model's recordings that are in its training data (recognised by content, whatever their
    folders are called) are reported apart as in-sample, with a warning; only the others are
    external validation.
    """
    from wearemo.batch import recording_fingerprints, training_overlap
    from wearemo.model import ModelVersionError, load_model
    from wearemo.model.report import write_report
    from wearemo.model.train import evaluate_fixed

    if report.suffix.lower() != ".json":
        raise _fail(f"--report {report}: the report is a .json file (the Markdown report and "
                    "its figures are written beside it)")
    try:
        fixed = None if loso else load_model(model)
    except (ValueError, FileNotFoundError, ModelVersionError) as exc:
        raise _fail(f"cannot evaluate: {exc}") from None
    data, data_hash, skipped = _data(recordings, features, jobs)
    try:
        if fixed is None:
            result: Any = _loso_with_progress(data, target=target, seed=seed, jobs=jobs,
                                              valence_midpoint=valence_midpoint)
        else:
            # Which recordings the model was trained on, by their content (not folder names).
            seen, method = training_overlap(
                recording_fingerprints(recordings, subjects=[d.subject_id for d in data]),
                fixed.manifest)
            if seen:
                pairs = ", ".join(f"{s} (= training subject {t})" if s != t else s
                                  for s, t in sorted(seen.items()))
                _say("WARNING", "red", f"{len(seen)} of {len(data)} recordings are in the "
                     f"training data of model {fixed.version}: {pairs}. Their scores are "
                     "in-sample, NOT validation; the report gives them apart (in_sample) "
                     "from the external validation on the others.")
            with console.status(f"scoring model {model}"):
                result = evaluate_fixed(data, fixed, seen=seen, method=method,
                                        valence_midpoint=valence_midpoint)
    except ValueError as exc:
        raise _fail(f"cannot evaluate: {exc}") from None
    summary = result.summary() | {"data": str(recordings), "data_hash": data_hash,
                                  "model": "loso (pre-registered)" if loso else model}
    if skipped:
        summary["skipped_recordings"] = {i.folder.name: i.message for i in skipped}
    md = write_report(summary, report)
    for part in ("pooled", "external_validation", "in_sample"):
        if summary.get(part):
            scores = summary[part] if part == "pooled" else summary[part]["pooled"]
            console.print(f"{part.replace('_', ' ')}:" if part != "pooled" else "pooled:")
            console.print_json(data=scores)
    console.print(f"report → {report}, {md}", soft_wrap=True, highlight=False)
    raise typer.Exit(EXIT_SKIPPED if skipped else 0)


@app.command()
def predict(
    recordings: Annotated[Path, typer.Argument(help="Recording folder or folder of them.")],
    out: Annotated[Path, typer.Option(help="Table to write, one row per window: .csv or "
                                      ".parquet.")],
    model: Annotated[str, typer.Option(help="'default' or an artifact folder.")] = "default",
    affect_model: Annotated[str | None, typer.Option(help="An affect model to add.")] = None,
    valence_model: Annotated[str | None, typer.Option(help="A valence model to add.")] = None,
    jobs: Annotated[int, typer.Option(help="Worker processes.")] = 2,
) -> None:
    """Run the streaming estimator over recordings; one row per window with its state.

    Unreadable recordings are skipped as in ``process`` (exit code 3).
    """
    from wearemo.model import ModelVersionError, load_model

    fmt = _table_format(out)
    total = _recording_count(recordings)
    extra = [m for m in (affect_model, valence_model) if m]
    try:  # a wrong model is one error, not one "skipped" line per recording
        main = load_model(model)
        main.for_subject("check", extra=[load_model(m) for m in extra])
    except (ValueError, FileNotFoundError, ModelVersionError) as exc:
        raise _fail(f"cannot predict: {exc}") from None
    issues: list[Any] = []
    frame = predict_rows(recordings, model=model, extra=extra, jobs=jobs,
                         on_issue=issues.append)
    code = _report_issues(issues, total)
    if frame.empty:
        _say("warning", "yellow", "no window: every recording is shorter than one "
             "window")
    _write_table(frame, out, fmt)
    console.print(f"{len(frame)} windows → {out}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


@app.command()
def export(
    data_dir: Annotated[Path, typer.Option(help="The service's data dir (WEAREMO_DATA_DIR).")],
    out: Annotated[Path, typer.Option(help="Folder for states/features/samples files.")],
    subject: Annotated[list[str] | None, typer.Option(
        help="Subject id to include (repeat it); all subjects when absent.")] = None,
    kind: Annotated[list[str] | None, typer.Option(
        help="states, features and/or samples (repeat it); all three when absent.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
    start: Annotated[str | None, typer.Option(help="Unix seconds or ISO-8601.")] = None,
    end: Annotated[str | None, typer.Option(help="Unix seconds or ISO-8601 (exclusive).")] = None,
) -> None:
    """Export a cohort from the store: one file per kind (``OUT/states.parquet``...) with a
    ``subject_id`` column, written page by page (columns and units: docs/read-api.md)."""
    from wearemo.api.routes.subjects import parse_time_ns
    from wearemo.settings import Settings
    from wearemo.store import open_store
    from wearemo.store.export import EXPORT_FORMATS, EXPORT_KINDS, export_stream
    from wearemo.store.private import private_dir, private_file

    settings = Settings(data_dir=data_dir)
    db = settings.resolved_sqlite_path()
    if not db.exists():  # opening would create an empty store
        raise typer.BadParameter(f"no wearemo store at {db}", param_hint="--data-dir")
    kinds = kind or list(EXPORT_KINDS)
    for k in kinds:
        if k not in EXPORT_KINDS:
            raise typer.BadParameter(f"{k!r}; options: {', '.join(EXPORT_KINDS)}",
                                     param_hint="--kind")
    if fmt not in EXPORT_FORMATS:
        raise typer.BadParameter(f"{fmt!r}; options: {', '.join(EXPORT_FORMATS)}",
                                 param_hint="--format")
    span = []
    for name, value in (("start", start), ("end", end)):
        try:
            span.append(None if value is None else parse_time_ns(value, name=name))
        except Exception:
            raise typer.BadParameter(f"{value!r} is neither unix seconds nor ISO-8601",
                                     param_hint=f"--{name}") from None
    store = open_store(settings)
    try:
        known = store.subject_ids()
        subjects = list(subject) if subject else known
        missing = [s for s in subjects if s not in known]
        if missing:
            raise typer.BadParameter(f"unknown subject(s) {', '.join(missing)}",
                                     param_hint="--subject")
        private_dir(out)  # health data: owner-only, like the store it comes from
        for k in kinds:
            path = out / f"{k}.{fmt}"
            tmp = path.with_suffix(path.suffix + ".part")  # never a half-written file at path
            with private_file(tmp).open("wb") as f:
                for chunk in export_stream(store, subjects, k, fmt,  # type: ignore[arg-type]
                                           start_ns=span[0], end_ns=span[1]):
                    f.write(chunk)
            tmp.replace(path)
            console.print(f"{k}: {len(subjects)} subjects → {path}")
    finally:
        store.close()


def _subject_map(entries: list[str], folders: list[Path]) -> dict[str, str]:
    """Folder name -> subject id from ``FOLDER=SUBJECT`` entries and ``folder,subject`` CSV
    files; every folder must be mapped when any entry is given, and every id be valid."""
    import csv
    import re

    from wearemo.samples import ID_PATTERN

    mapping: dict[str, str] = {}
    for entry in entries:
        if "=" in entry:
            name, _, subject = entry.partition("=")
            pairs = [(name.strip(), subject.strip(), f"--subject-map {entry}")]
        else:
            path = Path(entry)
            if not path.is_file():
                raise _fail(f"--subject-map {entry}: neither FOLDER=SUBJECT nor a CSV file")
            with path.open(newline="", encoding="utf-8-sig") as f:
                rows = list(csv.reader(f))
            if rows and [c.strip().lower() for c in rows[0][:2]] == ["folder", "subject"]:
                rows = rows[1:]
            pairs = []
            for k, row in enumerate(rows, start=2):
                if not any(c.strip() for c in row):
                    continue
                if len(row) < 2:
                    raise _fail(f"{path} row {k}: expected folder,subject, got {row!r}")
                pairs.append((row[0].strip(), row[1].strip(), f"{path} row {k}"))
        for name, subject, where in pairs:
            if not re.match(ID_PATTERN, subject):
                raise _fail(f"{where}: subject id {subject!r} is not a valid id (letters, "
                            "digits, '._:-', at most 128)")
            if mapping.get(name, subject) != subject:
                raise _fail(f"{where}: folder {name} is mapped to both {mapping[name]!r} and "
                            f"{subject!r}")
            mapping[name] = subject
    names = [f.name for f in folders]
    if not mapping:
        bad = [n for n in names if not re.match(ID_PATTERN, n)]
        if bad:
            raise _fail(f"folder names {bad} are not valid subject ids: pass --subject-map")
        return {n: n for n in names}
    unmapped = [n for n in names if n not in mapping]
    if unmapped:
        raise _fail(f"--subject-map does not map {len(unmapped)} folder(s): "
                    f"{', '.join(unmapped[:10])}{' ...' if len(unmapped) > 10 else ''}")
    for name in sorted(set(mapping) - set(names)):
        _say("warning", "yellow", f"--subject-map names {name}, which is not a recording folder "
             "here")
    return {n: mapping[n] for n in names}


@app.command("import")
def import_(
    recordings: Annotated[list[Path], typer.Argument(
        help="Recording folders, or folders of them (E4 layout).")],
    api: Annotated[str, typer.Option(help="Base URL of the wearemo API.")],
    key: Annotated[str | None, typer.Option(
        help="API key allowed to write the subjects (default: WEAREMO_API_KEY).")] = None,
    subject_map: Annotated[list[str] | None, typer.Option(
        help="FOLDER=SUBJECT, or a CSV file of folder,subject rows (repeat). Without it the "
        "folder names are the subject ids; with it every folder must be mapped.")] = None,
    state: Annotated[Path, typer.Option(
        help="Progress file: a re-run skips what the server acknowledged.")]
    = Path("wearemo-import.state.json"),
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Ignore the progress file and send every batch again (the server "
        "stores only what it lacks).")] = False,
    batches_per_request: Annotated[int, typer.Option(
        min=1, max=1000, help="Batches per request (halved when the server answers that a "
        "request is too large).")] = 60,
    device_id: Annotated[str, typer.Option(help="Device id on the batches.")] = "e4",
    max_wait: Annotated[float, typer.Option(
        help="Seconds one request may wait for a busy or unreachable server before the "
        "import stops (re-run to resume).")] = 600.0,
) -> None:
    """Upload a trial's recording folders to a running server (resumable, idempotent).

    Each folder goes to one subject as 10-s msgpack batches with ids derived from its files,
    so re-running stores nothing twice. Exit code 0: every folder imported; 3: some folders
    were refused by the server or unreadable (the others imported); 2: nothing could be done
    or the import stopped (bad arguments, key refused, server unreachable; re-run to resume).
    """
    import re

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from wearemo.datasets import find_recordings
    from wearemo.importer import ImportAbortedError, Importer, ImportState
    from wearemo.samples import ID_PATTERN

    api_key = key or os.environ.get("WEAREMO_API_KEY")
    if not api_key:
        raise _fail("no API key: pass --key or set WEAREMO_API_KEY")
    if not re.match(r"^https?://[^/\s]+", api):
        raise _fail(f"--api {api!r}: expected a URL such as http://127.0.0.1:8000")
    if not re.match(ID_PATTERN, device_id):
        raise _fail(f"--device-id {device_id!r} is not a valid id")
    folders: list[Path] = []
    for root in recordings:
        try:
            folders += find_recordings(root)
        except ValueError as exc:
            raise _fail(str(exc)) from None
    names = [f.name for f in folders]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _fail(f"folder name(s) {dup} appear under more than one root; import those roots "
                    "separately (a folder name picks its subject)")
    subjects = _subject_map(subject_map or [], folders)
    try:
        progress_file = ImportState(state)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    base = api.rstrip("/")
    try:
        httpx.get(f"{base}/healthz", timeout=10.0)
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach the API at {base}: {type(exc).__name__}: {exc}") from None
    try:  # a progress file that cannot be written is found now, not after the first upload
        progress_file.save()
    except OSError as exc:
        raise _fail(f"cannot write the progress file {state}: {exc.strerror or exc}") from None

    results: list[Any] = []
    aborted: str | None = None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with httpx.Client(timeout=120.0) as client, \
            Progress(*columns, console=console, transient=False) as bar:
        overall = bar.add_task("folders", total=len(folders))
        current = bar.add_task("batches", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(current, completed=done, total=total)

        importer = Importer(base, api_key, state=progress_file, client=client,
                            batches_per_request=batches_per_request, device_id=device_id,
                            max_wait_s=max_wait, on_progress=advance)
        for folder in folders:
            bar.update(current, description=f"{folder.name} → {subjects[folder.name]}",
                       completed=0, total=None)
            try:
                results.append(importer.import_folder(folder, subjects[folder.name],
                                                      resume=not fresh))
            except ImportAbortedError as exc:
                aborted = str(exc)
                break
            except OSError as exc:  # the progress file (disk full, removed folder)
                aborted = f"cannot write the progress file {state}: {exc.strerror or exc}"
                break
            bar.advance(overall)

    table = Table("folder", "subject", "status", "batches", "resumed at", "stored",
                  "duplicates", "samples", title="wearemo import")
    for r in results:
        colour = {"imported": "green", "already imported": "green"}.get(r.status, "red")
        table.add_row(r.folder.name, r.subject, f"[{colour}]{r.status}[/{colour}]",
                      f"{r.acked}/{r.batches}", str(r.resumed_at), str(r.stored),
                      str(r.duplicates), str(r.samples))
    console.print(table)
    for r in results:
        for w in r.warnings:
            _say("warning", "yellow", w)
        if r.status in ("refused", "unreadable"):
            _say(r.status, "red", f"{r.folder}: {r.message}")
    bad = [r for r in results if r.status in ("refused", "unreadable")]
    done = len(results) - len(bad)
    _say("summary", "red" if bad or aborted else "green",
         f"{done} of {len(folders)} folders imported into {base}, {len(bad)} refused or "
         f"unreadable; {sum(r.stored for r in results)} batches stored, "
         f"{sum(r.duplicates for r in results)} already there; {importer.retries} requests "
         f"waited for the server ({importer.waited_s:.0f} s); progress in {state}")
    if aborted is not None:
        raise _fail(f"import stopped: {aborted}")
    raise typer.Exit(EXIT_SKIPPED if bad else 0)


def main() -> None:
    """Entry point of ``python -m wearemo``."""
    app()
