"""Errors a user can act on: each message says what went wrong and what to do."""


class DRMError(Exception):
    """Base class for errors meant for the user (printed without a traceback by stages)."""


class ConfigError(DRMError):
    """params.yaml (or a config object) is invalid."""


# The stages of the embedded pipeline file (embedded/dvc.yaml): DVC addresses them as FILE:STAGE.
EMBEDDED_STAGES = ("world", "pretrain")


def repro_target(stage: str) -> str:
    """What `dvc repro` takes to run `stage`."""
    return f"embedded/dvc.yaml:{stage}" if stage in EMBEDDED_STAGES else stage


class MissingArtifactError(DRMError):
    """An upstream artifact is missing; the message names the stage that makes it."""

    def __init__(self, path, stage: str):
        self.path = str(path)
        self.stage = stage
        super().__init__(
            f"missing artifact {self.path}: run the '{stage}' stage first "
            f"(`dvc repro {repro_target(stage)}`, or `dvc repro` for the whole pipeline)"
        )


class DescriptionsError(DRMError):
    """A concept-descriptions file is malformed or incomplete."""


def require(path, stage: str):
    """Return `path` as a Path if it exists, else raise MissingArtifactError naming `stage`."""
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise MissingArtifactError(p, stage)
    return p
