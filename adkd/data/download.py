"""Opt-in dataset downloads (``dataset.download=true``), through anomalib's downloader.

Where anomalib knows the dataset, its ``DOWNLOAD_INFO`` (URL and sha256 of the archive) is used, and
the archive is extracted into ``root`` as it is: anomalib's own post-processing (VisA's re-sorting into
an MVTec AD layout, BTAD's conversion of every ``.bmp`` to ``.png``) is not applied, since adkd reads
each release in its authors' layout.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from urllib.request import urlretrieve

from adkd.errors import DatasetNotFoundError

log = logging.getLogger(__name__)

KSDD2_URL = "https://go.vicos.si/kolektorsdd2"

# adkd's name -> the anomalib datamodule module that holds the dataset's DOWNLOAD_INFO
ANOMALIB_DOWNLOADS = {
    "mvtec": "anomalib.data.datamodules.image.mvtecad",
    "visa": "anomalib.data.datamodules.image.visa",
    "ksdd": "anomalib.data.datamodules.image.kolektor",
    "mvtec_ad2": "anomalib.data.datamodules.image.mvtecad2",
    "btad": "anomalib.data.datamodules.image.btech",
    "mvtec_loco": "anomalib.data.datasets.image.mvtec_loco",  # anomalib keeps it beside the dataset class
}
BTAD_FOLDER = "BTech_Dataset_transformed"  # the archive's top folder, above 01, 02 and 03


def download_info(name: str):  # noqa: ANN201
    """anomalib's DownloadInfo for dataset ``name``."""
    import importlib

    return importlib.import_module(ANOMALIB_DOWNLOADS[name]).DOWNLOAD_INFO


def download(name: str, root: Path) -> None:
    """Download and extract dataset ``name`` (a key of ``ANOMALIB_DOWNLOADS``, or ksdd2) into ``root``."""
    from anomalib.data.utils.download import download_and_extract, extract

    if name not in ANOMALIB_DOWNLOADS and name != "ksdd2":
        raise ValueError(f"No download is known for dataset {name!r}")
    root.mkdir(parents=True, exist_ok=True)
    try:
        if name == "ksdd2":
            # anomalib knows only KolektorSDD (v1), and the authors publish no checksum for v2.
            archive = root / "KolektorSDD2.zip"
            if not archive.exists():
                log.info("Downloading KolektorSDD2 from %s", KSDD2_URL)
                urlretrieve(KSDD2_URL, archive)  # noqa: S310 - fixed https URL
            extract(archive, root)
        else:
            download_and_extract(root, download_info(name))  # checks the archive's sha256
        if name == "btad":
            lift_folder(root / BTAD_FOLDER)
    except Exception as err:  # noqa: BLE001 - network/IO errors become one actionable message
        raise DatasetNotFoundError(
            f"Downloading {name} failed: {err}\nDownload it by hand and extract it into {root}."
        ) from err


def lift_folder(folder: Path) -> None:
    """Move what ``folder`` holds into its parent, and remove it (BTAD's archive wraps its
    products in one folder; adkd's root holds them directly)."""
    if not folder.is_dir():
        return
    for item in folder.iterdir():
        shutil.move(str(item), str(folder.parent / item.name))
    folder.rmdir()
