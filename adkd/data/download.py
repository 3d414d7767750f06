"""Opt-in dataset downloads (``dataset.download=true``), through anomalib's downloader."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.request import urlretrieve

from adkd.errors import DatasetNotFoundError

log = logging.getLogger(__name__)

KSDD2_URL = "https://go.vicos.si/kolektorsdd2"


def download(name: str, root: Path) -> None:
    """Download and extract dataset ``name`` (mvtec, visa or ksdd2) into ``root``."""
    from anomalib.data.utils.download import download_and_extract, extract

    root.mkdir(parents=True, exist_ok=True)
    try:
        if name == "mvtec":
            from anomalib.data.datamodules.image.mvtecad import DOWNLOAD_INFO

            download_and_extract(root, DOWNLOAD_INFO)  # checks the archive's sha256
        elif name == "visa":
            from anomalib.data.datamodules.image.visa import DOWNLOAD_INFO

            download_and_extract(root, DOWNLOAD_INFO)
        elif name == "ksdd2":
            # anomalib knows only KolektorSDD (v1), and the authors publish no checksum for v2.
            archive = root / "KolektorSDD2.zip"
            if not archive.exists():
                log.info("Downloading KolektorSDD2 from %s", KSDD2_URL)
                urlretrieve(KSDD2_URL, archive)  # noqa: S310 - fixed https URL
            extract(archive, root)
        else:
            raise ValueError(f"No download is known for dataset {name!r}")
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - network/IO errors become one actionable message
        raise DatasetNotFoundError(
            f"Downloading {name} failed: {err}\nDownload it by hand and extract it into {root}."
        ) from err
