"""The account cache writer now lives in `shared/account_cache.py` (account_feed and
rest_fallback both write the position/balance hashes, so the one writer is shared).
This module keeps account_feed's old import path working."""

from __future__ import annotations

from shared.account_cache import APPLY_LUA, AccountCache, build_call

__all__ = ["APPLY_LUA", "AccountCache", "build_call"]
