"""The specs of a deployment: every file of the specs folder, and which use case a command means.

One home for two questions every entry point asks: which specs load (a broken file is an
error of its own, never a reason to drop the others), and which use case ``--use-case``
(or its default) names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import DataSpec, PipelineSpec, SpecError, load_any_spec_file


class UseCaseError(SpecError):
    """``--use-case`` names no spec, or is needed because there are several; one line."""


@dataclass(frozen=True)
class SpecFolder:
    """The specs of a folder that load (with their files), and the error of each that does not."""

    specs: dict[Path, DataSpec] = field(default_factory=dict)
    errors: dict[Path, str] = field(default_factory=dict)

    @property
    def use_cases(self) -> dict[str, PipelineSpec]:
        return {s.name: s for s in self.specs.values() if isinstance(s, PipelineSpec)}


def load_folder(folder: Path) -> SpecFolder:
    """Every ``*.yaml`` spec of ``folder``; a file that fails to load is an error of its own.

    A spec whose name or dataset repeats an earlier file's is an error too: its DAGs would
    collide, or two DAGs would write the same partitions.
    """
    out = SpecFolder()
    names: dict[str, Path] = {}
    datasets: dict[str, Path] = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        try:
            spec = load_any_spec_file(path)
        except SpecError as exc:
            out.errors[path] = str(exc)
            continue
        if spec.name in names:
            out.errors[path] = f"invalid pipeline spec {path}: name: {spec.name!r} is also the name in {names[spec.name]}"
            continue
        if spec.dataset.name in datasets:
            out.errors[path] = (f"invalid pipeline spec {path}: dataset.name: {spec.dataset.name!r} is also "
                                f"ingested by {datasets[spec.dataset.name]} (one writer per partition: keep one "
                                "of the two files; a use-case spec carries its dataset section)")
            continue
        names[spec.name], datasets[spec.dataset.name] = path, path
        out.specs[path] = spec
    return out


def _broken(folder: SpecFolder) -> str:
    return "; ".join(folder.errors.values())


def resolve(name: str | None, *, settings: Settings | None = None, datasets: bool = False) -> DataSpec:
    """The spec a command acts on: the use case named ``name`` (``datasets``: or the dataset
    spec of that name), else ``FLYWHEEL_USE_CASE`` when set, else the only use case.

    Raises :class:`UseCaseError` with one line listing the choices.
    """
    settings = settings or get_settings()
    folder = load_folder(settings.specs_dir)
    candidates: dict[str, DataSpec] = dict(folder.use_cases)
    if datasets:
        candidates = {s.name: s for s in folder.specs.values()} | candidates
    if name is None and "use_case" in settings.model_fields_set:
        name = settings.use_case
    known = ", ".join(sorted(candidates)) or "none"
    if name is not None:
        if name in candidates:
            return candidates[name]
        hint = f"; broken spec files: {_broken(folder)}" if folder.errors else ""
        raise UseCaseError(f"no use case {name!r} in {settings.specs_dir} (known: {known}){hint}")
    use_cases = folder.use_cases
    if len(use_cases) == 1:
        return next(iter(use_cases.values()))
    if not use_cases:
        hint = f" (broken spec files: {_broken(folder)})" if folder.errors else ""
        raise UseCaseError(f"no use-case spec in {settings.specs_dir}{hint}: draft one with "
                           "`flywheel init-use-case`, or point FLYWHEEL_SPECS_DIR at your specs")
    raise UseCaseError(f"{len(use_cases)} use cases in {settings.specs_dir} ({', '.join(sorted(use_cases))}): "
                       "pass --use-case NAME")


def find_dataset(dataset: str, *, settings: Settings | None = None) -> tuple[Path, DataSpec]:
    """The spec file (and spec) of the folder whose dataset is named ``dataset``."""
    settings = settings or get_settings()
    folder = load_folder(settings.specs_dir)
    for path, spec in folder.specs.items():
        if spec.dataset.name == dataset or spec.name == dataset:
            return path, spec
    known = ", ".join(sorted(s.dataset.name for s in folder.specs.values())) or "none"
    hint = f"; broken spec files: {_broken(folder)}" if folder.errors else ""
    raise UseCaseError(f"no spec in {settings.specs_dir} has dataset {dataset!r} (known: {known}){hint}: "
                       "draft one with `flywheel init-dataset`")
