"""Restarting the emulator under a running worker (issue 23, item 3): the pool's FCM service
account holds the emulator's `token_uri`, and the worker's settings its URLs. The emulator keeps
its ports in its --dir, so after a restart the same worker and the same pool reach it again: a
fresh OAuth token from the restarted emulator (which knows none of the old ones), then the push."""

from __future__ import annotations

import json
from pathlib import Path

from ..conftest import POOL
from .harness import Emulator, Pipeline, new_identity, wait_for


def _accepted(emu: Emulator, ident: str, service: str, count: str) -> bool:
    return any(r["status"] == 200 and r["service"] == service and r["data"]["syncCount"] == count
               for r in emu.pushes_for(ident))


def test_a_pool_made_before_an_emulator_restart_still_pushes_after_it(tmp_path):
    emu = Emulator(tmp_path / "emu")
    (tmp_path / "pipe").mkdir()
    pipe = Pipeline(tmp_path / "pipe", emu, f"sqlite:///{tmp_path}/store.db", broker_db=13)
    try:
        pipe.create_pool(POOL)
        ident = new_identity()
        pipe.device(POOL, ident, "GCM", "fcm-before-and-after")
        pipe.device(POOL, ident, "APNS", "ab" * 32)
        pipe.start_worker("-c", "1")
        pipe.start_scheduler()
        pipe.cli("publish", POOL, ident, "notes", "1")
        wait_for(lambda: _accepted(emu, ident, "fcm", "1") and _accepted(emu, ident, "apns", "1"), 40,
                 what="the pushes before the restart")
        assert emu.stats()["oauth_tokens_issued"] >= 1
        token_uri = json.loads(Path(emu.info["service_account"]).read_text())["token_uri"]

        emu.stop()
        emu = Emulator(tmp_path / "emu")  # the same --dir: the same ports, the same keys
        assert json.loads(Path(emu.info["service_account"]).read_text())["token_uri"] == token_uri
        assert emu.info["fcm_url"] == pipe.env["PUSHSYNC_FCM_URL"]
        pipe.cli("publish", POOL, ident, "notes", "2")
        wait_for(lambda: _accepted(emu, ident, "fcm", "2") and _accepted(emu, ident, "apns", "2"), 60,
                 what="the pushes after the restart, through the same worker and pool")
        # the worker's old access token means nothing to the new process: it asked the pool's
        # token_uri, which is the restarted emulator's
        assert emu.stats()["oauth_tokens_issued"] >= 1
        assert not pipe.dead_letters()
    finally:
        pipe.stop_workers()
        emu.stop()
