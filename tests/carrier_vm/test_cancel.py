"""An abort (SIGTERM, SIGINT, SIGHUP, `abort`) must end a put even when a
cancel is swallowed: in Python 3.11, a wait_for whose inner future completes
at the moment of the cancel returns instead of raising, and the task goes on.
Seen under load in make test: the aborted put's send task went on to wait for
stdin, which Qubes keeps open, and the session's cleanup waited for it for
ever (the put never exited)."""

from __future__ import annotations

import asyncio

from carrier_vm.ssh import _settle


def test_a_session_task_that_swallows_its_cancel_is_cancelled_again() -> None:
    async def cancel_and_settle() -> tuple[bool, bool, list[str]]:
        stdin_data = asyncio.Event()  # never set: Qubes sends nothing more
        seen: list[str] = []

        async def stubborn_sender() -> None:
            try:
                await stdin_data.wait()
            except asyncio.CancelledError:
                seen.append("cancel swallowed")  # as 3.11's wait_for may do
            await stdin_data.wait()  # and it goes on waiting for stdin
            seen.append("never here")

        sender = asyncio.ensure_future(stubborn_sender())
        await asyncio.sleep(0)  # it waits
        sender.cancel()
        settling = asyncio.ensure_future(_settle(sender))
        done, _ = await asyncio.wait({settling}, timeout=10)
        settling.cancel()
        return bool(done), sender.cancelled(), seen

    settled, cancelled, seen = asyncio.run(cancel_and_settle())
    assert settled, "the session's cleanup waited for ever"
    assert cancelled
    assert seen == ["cancel swallowed"]
