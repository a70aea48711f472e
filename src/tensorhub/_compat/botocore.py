"""botocore's undocumented session components, used to make S3 clients cheap to create and fast.

Private API used:

* ``Session.get_component("data_loader")`` / ``Session.register_component("data_loader", ...)``:
  every client of a session parses the service model JSON once through its data loader;
  sharing one loader across sessions parses the S3 model once per process instead of once
  per ``s3://`` store (tens of milliseconds each).
* ``Session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=...)``:
  the function botocore parses response timestamps with (``LastModified``); its default
  (dateutil) dominated the CPU cost of listing an index collection.

Checked against botocore 1.34 to 1.43.11.

If it changes: opening an ``s3://`` store fails with an ``AttributeError``/``KeyError`` (a
component renamed), or listings silently get slower (the parser default ignored).
``test_item08_botocore_private_session_api`` fails first.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import botocore.loaders
import botocore.session


def data_loader(session: botocore.session.Session) -> botocore.loaders.Loader:
    """The loader of service models ``session``'s clients use."""
    return session.get_component("data_loader")


def share_data_loader(session: botocore.session.Session, loader: botocore.loaders.Loader) -> None:
    """Make ``session``'s clients load service models through ``loader`` (and its cache)."""
    session.register_component("data_loader", loader)


def set_timestamp_parser(session: botocore.session.Session, parser: Callable[[Any], datetime]) -> None:
    """Make ``session``'s clients parse response timestamps with ``parser``."""
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parser)
