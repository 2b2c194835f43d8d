"""The staging fetcher: TUF's updater reads the metadata that arrived over MQTT from memory.

Apart from shared/trust.py so that ``tuf.ngclient`` (and urllib3 with it) is imported
only when metadata is verified, not when the agent starts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Final

from tuf.api import exceptions as tuf_errors
from tuf.ngclient.fetcher import FetcherInterface

STAGING_URL: Final = "staging:///"  # base "URL" the Updater asks the staging fetcher for


class StagingFetcher(FetcherInterface):
    """Serves the files that arrived over MQTT, as the Updater's "remote repository".

    A missing file is a 404: that is how the Updater learns there is no newer root.
    """

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self._files = files
        self.root_asked = 0  # highest N of an N.root.json the Updater asked for

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = url.removeprefix(STAGING_URL)
        head, _, rest = name.partition(".")
        if rest == "root.json" and head.isdigit():
            self.root_asked = max(self.root_asked, int(head))
        data = self._files.get(name)
        if data is None:
            raise tuf_errors.DownloadHTTPError(f"{name} is not in the staged metadata", 404)
        return iter((data,))
