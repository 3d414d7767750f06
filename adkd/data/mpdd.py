"""MPDD, the Metal Parts Defect Detection dataset (Jezek et al., ICUMT 2021): six metal parts in the
MVTec AD layout (``ground_truth/<defect>/<image stem>_mask.png``), read as any such folder is.

Its authors publish it on a OneDrive share with no fixed download link or checksum (anomalib asks
for a manual download too), so ``dataset.download=true`` is refused with where to get it.
"""

from __future__ import annotations

from adkd.data.folder import MVTEC_LAYOUT, FolderDataModule
from adkd.errors import ConfigError, DatasetNotFoundError

# The authors' OneDrive share, as anomalib's MPDD datamodule gives it.
MPDD_URL = (
    "https://vutbr-my.sharepoint.com/:f:/g/personal/xjezek16_vutbr_cz/"
    "EhHS_ufVigxDo3MC6Lweau0BVMuoCmhMZj6ddamiQ7-FnA?e=oHKCxI"
)


class MPDDDataModule(FolderDataModule):
    """MPDD: 6 categories, pixel masks."""

    name = "mpdd"
    categories = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")
    default_category = "bracket_black"

    def __init__(self, root: str | None = None, category: str | None = None, download: bool = False, **kwargs) -> None:
        if download:
            raise ConfigError(
                f"MPDD cannot be downloaded by adkd: its authors share it on OneDrive ({MPDD_URL}). "
                "Download and extract it, then set dataset.root=/path/to/mpdd without dataset.download."
            )
        super().__init__(root=root or "datasets/mpdd", category=category, **kwargs)

    def check_available(self) -> None:
        if not self.is_present():
            raise DatasetNotFoundError(
                f"MPDD category {self.category!r} not found at {self.path}.\nExpected layout:\n{MVTEC_LAYOUT}\n"
                f"Get it from the authors' OneDrive share ({MPDD_URL}), extract it and set dataset.root=/path/to/mpdd."
            )
