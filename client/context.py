"""What every command gets: its parsed flags, where to print, and the resolved settings."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from client.config import ANONYMOUS_APIKEY, Settings, resolve
from client.output import Output

if TYPE_CHECKING:
    from client.api import HordeClient


@dataclass
class Context:
    args: argparse.Namespace
    output: Output = field(default_factory=Output)

    @cached_property
    def settings(self) -> Settings:
        return resolve(url_flag=getattr(self.args, "url", None), apikey_flag=getattr(self.args, "apikey", None))

    def client(self) -> HordeClient:
        """A client acting as the account the user named: the apikey when one is set, signed by the
        identity when it belongs to that account (or alone when no apikey is set), and as the
        anonymous requester when there is neither."""
        from client.api import HordeClient  # here, so offline commands never import aiohttp

        identity = self.settings.load_identity()
        apikey = self.settings.apikey
        if identity is not None and not self.settings.signs_for(identity):
            # Signing anyway would act as the key's account, not the one the apikey names.
            self.output.note(
                f"note: not signing with {self.settings.identity_file}: it is not registered to this apikey's "
                "account; sending the apikey alone"
            )
            identity = None
        if identity is None and apikey is None:
            apikey = ANONYMOUS_APIKEY
        return HordeClient(self.settings.url, apikey=apikey, identity=identity)
