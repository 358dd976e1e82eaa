"""The lease of a run folder: one run at a time writes it (``_lease.json``, created exclusively).

See :mod:`p8utils.runs` for the protocol. A holder is *gone* when it ran on
this host and its process no longer exists, or when its lease was not
refreshed for :data:`LEASE_EXPIRY_S` seconds.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import sys
import threading
import uuid
from dataclasses import asdict, dataclass
from typing import Optional

from p8utils.errors import DamagedRunFileError, OutputBusyError
from p8utils.protocol.folders import RunLayout

__all__ = ["LEASE_EXPIRY_S", "LEASE_REFRESH_S", "LeaseHolder", "Refresher", "lost_reason", "new_run_id", "take_lease",
           "utc_now"]

log = logging.getLogger(__name__)

#: Seconds between two refreshes of a live run's lease.
LEASE_REFRESH_S = 30.0

#: A lease not refreshed for this many seconds belongs to a run that is gone
#: (used for holders on other hosts; on the same host the process is checked).
LEASE_EXPIRY_S = 600.0


def utc_now() -> _dt.datetime:
    """Return the current UTC time."""
    return _dt.datetime.now(_dt.timezone.utc)


def _process_start(pid: int) -> Optional[int]:
    """Start time of process ``pid`` in clock ticks since boot (Linux), to tell it from a later one reusing the pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _process_alive(pid: int, start: Optional[int]) -> bool:
    """Tell whether process ``pid`` (started at ``start``, if known) still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    if start is not None:
        now_start = _process_start(pid)
        if now_start is not None and now_start != start:
            return False  # the pid was reused by another process
    return True


@dataclass(frozen=True)
class LeaseHolder:
    """What ``_lease.json`` says about the run holding an output folder.

    Attributes
    ----------
    run_id : str
        ``<UTC start YYYYmmddTHHMMSS>-<8 hex>``: sorts by start time.
    host : str
        Host name of the driver.
    pid : int
        Process id of the driver (the Python process).
    pid_start : int or None
        The process's start time (clock ticks since boot, Linux), which tells
        it from a later process reusing the pid.
    started_at, refreshed_at : str
        ISO-8601 UTC times.
    expires_after_s : float
        Seconds without refresh after which the lease counts as abandoned.
    command : str
        The holder's command line, to recognise it.
    """

    run_id: str
    host: str
    pid: int
    pid_start: Optional[int]
    started_at: str
    refreshed_at: str
    expires_after_s: float = LEASE_EXPIRY_S
    command: str = ""

    @classmethod
    def for_this_process(cls, run_id: str) -> LeaseHolder:
        """Describe the lease this process writes for ``run_id``."""
        now = utc_now().isoformat()
        return cls(run_id, socket.gethostname(), os.getpid(), _process_start(os.getpid()), now, now,
                   LEASE_EXPIRY_S, " ".join(sys.argv)[:500])

    def refreshed(self) -> LeaseHolder:
        """Return the same lease with ``refreshed_at`` set to now."""
        return LeaseHolder(**{**asdict(self), "refreshed_at": utc_now().isoformat()})

    def to_bytes(self) -> bytes:
        """JSON encoding of the lease file."""
        return json.dumps(asdict(self), indent=2).encode("utf-8")

    @classmethod
    def read(cls, lay: RunLayout) -> Optional[LeaseHolder]:
        """Read the lease file of the run folder ``lay``; None when it does not exist (invalid JSON is an error)."""
        uri = lay.lease
        try:
            data = lay.store.read_bytes(uri)
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - Hadoop FileNotFoundException through py4j
            if not lay.store.exists(uri):
                return None
            raise
        try:
            fields = json.loads(data.decode("utf-8"))
            return cls(**{k: fields[k] for k in asdict(cls("", "", 0, None, "", "")) if k in fields})
        except (ValueError, TypeError, KeyError) as exc:
            raise DamagedRunFileError(
                f"the lease file {uri} is damaged ({exc!r}). Fix: if no run is writing to this folder, delete it; "
                "then run again."
            ) from None

    def gone_reason(self, now: Optional[_dt.datetime] = None) -> Optional[str]:
        """Why the holder is provably gone, or None while it may be alive."""
        now = now or utc_now()
        if self.host == socket.gethostname() and not _process_alive(self.pid, self.pid_start):
            return f"process {self.pid} on {self.host} has ended"
        try:
            age = (now - _dt.datetime.fromisoformat(self.refreshed_at)).total_seconds()
        except ValueError:
            age = float("inf")
        if age > self.expires_after_s:
            return f"its lease was last refreshed {age:.0f} s ago (expiry {self.expires_after_s:.0f} s)"
        return None

    def describe(self) -> str:
        """One line naming the holder."""
        return (f"run {self.run_id} (host {self.host}, pid {self.pid}, started {self.started_at}, "
                f"lease refreshed {self.refreshed_at}; command: {self.command or '?'})")




def _busy(lay: RunLayout, holder: LeaseHolder) -> OutputBusyError:
    return OutputBusyError(
        f"output={lay.root!r} is in use by {holder.describe()}. Nothing was written. Fix: wait until that run "
        f"ends (its lease is refreshed every {LEASE_REFRESH_S:.0f} s and counts as abandoned "
        f"{holder.expires_after_s:.0f} s after the last refresh), write to another output, or, only if you "
        f"are sure that run is gone, delete {lay.lease}."
    )


def take_lease(lay: RunLayout, mine: LeaseHolder) -> Optional[LeaseHolder]:
    """Create the lease of ``mine``; return the gone holder it replaced, if any.

    Raises
    ------
    OutputBusyError
        A live run holds the folder, or another run won a race for it.
    """
    replaced: Optional[LeaseHolder] = None
    for _ in range(5):
        if lay.store.create_exclusive(lay.lease, mine.to_bytes()):  # atomic: O_EXCL, If-None-Match on S3
            return replaced
        holder = LeaseHolder.read(lay)
        if holder is None:
            continue  # released meanwhile: try again
        if holder.run_id == mine.run_id:
            return replaced  # a retried request whose first attempt had created it (S3 answers 412 to the retry)
        reason = holder.gone_reason()
        if reason is None:
            raise _busy(lay, holder)
        log.warning("taking over the lease of %s: %s", holder.describe(), reason)
        again = LeaseHolder.read(lay)
        if again is not None and again.run_id == holder.run_id:
            lay.store.delete(lay.lease)
        replaced = holder
    raise OutputBusyError(f"output={lay.root!r}: could not take its lease (other runs keep racing). Fix: run again.")


def lost_reason(lay: RunLayout, run_id: str) -> Optional[str]:
    """Why ``run_id`` no longer holds the lease of ``lay`` (None while it does)."""
    holder = LeaseHolder.read(lay)
    if holder is None:
        return "the lease file is gone"
    return None if holder.run_id == run_id else f"now held by {holder.describe()}"


class Refresher(threading.Thread):
    """Rewrites the lease every ``LEASE_REFRESH_S`` seconds; notices when it was lost."""

    def __init__(self, lay: RunLayout, mine: LeaseHolder) -> None:
        super().__init__(name="p8utils-lease", daemon=True)
        self._lay, self._mine = lay, mine
        self._stop_event = threading.Event()
        self.lost: Optional[str] = None

    def run(self) -> None:
        """Refresh until stopped, or until the lease is found lost."""
        while not self._stop_event.wait(LEASE_REFRESH_S):
            try:
                holder = LeaseHolder.read(self._lay)
                if holder is None or holder.run_id != self._mine.run_id:
                    self.lost = "the lease file is gone" if holder is None else f"now held by {holder.describe()}"
                    return
                self._lay.store.write_bytes(self._lay.lease, holder.refreshed().to_bytes())
            except Exception as exc:  # noqa: BLE001 - a transient I/O error: try again next time
                log.warning("could not refresh the lease %s: %s", self._lay.lease, exc)

    def stop(self) -> None:
        """Stop refreshing (the thread ends at its next wake-up)."""
        self._stop_event.set()


def new_run_id() -> str:
    """Return a new run id: ``<UTC start YYYYmmddTHHMMSS>-<8 hex>`` (sorts by start time)."""
    return utc_now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
