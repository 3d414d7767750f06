"""Errors a user can fix. Import-free, so the CLI can catch them before anything heavy loads.

Each one's message names the file or config key at fault and what to do; the CLI prints it on
one line (or a few), without a traceback, and exits with status 1.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of every error whose message tells the user how to fix it."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work (an unknown category, a GPU asked for where there is none)."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """The dataset is not where the config says; the message says where to get it."""


class DataCheckError(UserError):
    """The data check found files that cannot be used; the message lists every one."""


class ImageReadError(UserError, RuntimeError):
    """An image or mask file could not be read or does not match its partner."""


class ImageTooLargeError(ImageReadError):
    """An image whose header declares more pixels than the reader takes (checked before decoding).
    ``size``: what the header says ("13000x13000")."""

    def __init__(self, name: str, size: str, max_pixels: int) -> None:
        self.name, self.size, self.max_pixels = name, size, max_pixels
        super().__init__(
            f"Image {name} is {size} pixels, over the limit of {max_pixels:,} pixels "
            f"({max_pixels / 1e6:g} megapixels): send a smaller image."
        )


class BackboneWeightsError(UserError, RuntimeError):
    """Pretrained weights were asked for and none could be had, or the file does not fit."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used for this run."""


class TrainingDivergedError(UserError, RuntimeError):
    """The training loss became NaN or infinite: the weights are lost, the run cannot go on."""


def cause_in(err: BaseException, match) -> BaseException | None:  # noqa: ANN001
    """The first error in ``err``'s chain of causes for which ``match`` is true (Hydra's instantiate,
    Lightning's trainer and torch's save all wrap what they raise)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if match(err):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def user_error_in(err: BaseException) -> UserError | None:
    """The UserError behind ``err``, if any: Hydra's instantiate wraps what a constructor raises."""
    return cause_in(err, lambda e: isinstance(e, UserError))
