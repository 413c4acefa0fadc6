"""Predict files and folders: each output written like its input, under the same relative path.

``medi2i predict`` calls :func:`predict_paths`. Inputs may be files or folders (searched
recursively for image files, :func:`medi2i.data.io.is_image_file`: DICOM, NIfTI, PNG 8/16,
TIFF, NPY). Every output is written by :func:`medi2i.data.io.write_image` in its input's
format, geometry and value range (DICOM marked DERIVED with new UIDs):

* a file found in a folder ``IN`` goes to ``OUT/<its path relative to IN>``;
* a file given directly goes to ``OUT/<its name>``.

Inputs are never overwritten: an output folder equal to an input folder, or inside one, is
refused before anything is read. Outputs that already exist are skipped (and listed) unless
``overwrite``. A file that cannot be read, predicted or written is logged with its reason and
listed as failed; the other files still finish.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medi2i.data.io import ImageIOError, is_image_file, read_image, write_image
from medi2i.inference.predictor import Predictor
from medi2i.utils.progress import Progress

log = logging.getLogger(__name__)

__all__ = ["PredictSummary", "collect_inputs", "predict_paths"]


@dataclass
class PredictSummary:
    """What :func:`predict_paths` did.

    Attributes:
        ok: outputs written.
        failed: ``(input, reason)`` of every file that could not be predicted.
        seconds: wall time.
        skipped: outputs that already existed and were left alone (``overwrite`` off).
        output_dir: the output folder.
    """

    ok: list[Path]
    failed: list[tuple[Path, str]]
    seconds: float
    skipped: list[Path] = field(default_factory=list)
    output_dir: Path | None = None

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, else 1 (for the command line)."""
        return 1 if self.failed else 0

    def line(self) -> str:
        """One summary line for the end of a run."""
        total = len(self.ok) + len(self.failed) + len(self.skipped)
        text = (
            f"predicted {len(self.ok)} of {total} file(s) in {self.seconds:.1f} s: "
            f"{len(self.failed)} failed, {len(self.skipped)} skipped (output existed)"
        )
        if self.output_dir is not None:
            text += f" -> {self.output_dir}"
        return text


def _is_within(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies inside it (both resolved)."""
    return path == folder or folder in path.parents


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def collect_inputs(
    inputs: Sequence[str | os.PathLike], output_dir: str | os.PathLike
) -> list[tuple[Path, Path]]:
    """Pair every input image with its output path.

    Args:
        inputs: files and folders (folders searched recursively; hidden files and folders,
            and files that are not images, are ignored).
        output_dir: the output folder.

    Returns:
        ``(input, output)`` pairs in order: inputs in the given order, folder contents sorted.
        A path that does not exist is kept (its prediction fails with "not found").

    Raises:
        ValueError: no inputs, an output folder equal to or inside an input folder (or equal
            to the folder of an input file), or two inputs that would write the same output.
    """
    if not inputs:
        raise ValueError("no inputs given")
    out = Path(output_dir).resolve()
    pairs: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            folder = path.resolve()
            if _is_within(out, folder):
                raise ValueError(
                    f"output folder {out} is {'the' if out == folder else 'inside the'} input "
                    f"folder {folder}; choose a folder outside it (inputs are never overwritten)"
                )
            found = ignored = 0
            for candidate in sorted(path.rglob("*")):
                rel = candidate.relative_to(path)
                if candidate.is_dir() or _hidden(rel):
                    continue
                if not is_image_file(candidate):
                    ignored += 1
                    continue
                pairs.append((candidate, out / rel))
                found += 1
            (log.info if found else log.warning)(
                "%s: %d image file(s)%s",
                path,
                found,
                f", {ignored} other file(s) ignored" if ignored else "",
            )
        else:
            if path.exists() and path.resolve().parent == out:
                raise ValueError(
                    f"output folder {out} holds the input {path}; choose another folder "
                    "(inputs are never overwritten)"
                )
            pairs.append((path, out / path.name))
    seen: dict[Path, Path] = {}
    clashes = []
    for src, dest in pairs:
        if dest in seen:
            clashes.append(f"{seen[dest]} and {src} -> {dest}")
        seen[dest] = src
    if clashes:
        raise ValueError("inputs that would write the same output:\n  " + "\n  ".join(clashes))
    return pairs


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is "no space left on device"."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ImageIOError):
        return exc.problem
    return f"{type(exc).__name__}: {exc}"


def _missing_reason(path: Path) -> str:
    """Why ``path`` cannot be read as a file: a link loop, a broken link, a folder, or absent."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 reports a symlink loop this way
            return "symbolic link loop"
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "symbolic link loop"
            return f"broken symbolic link (to {os.readlink(path)})"
    if path.exists():
        return "not a regular file"
    return "not found"


def check_output_folder(output_dir: str | os.PathLike) -> Path:
    """Create ``output_dir`` if needed and prove it writable, before any image is predicted.

    Raises:
        ValueError: the folder cannot be created or written, with the system's reason.
    """
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".medi2i-write-test-"):
            pass
    except OSError as exc:
        raise ValueError(
            f"output folder {out} is not writable: {exc.strerror or exc}; choose another --output"
        ) from exc
    return out


def predict_paths(
    predictor: Predictor,
    inputs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    slice_index: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> PredictSummary:
    """Predict every image of ``inputs`` and write the results under ``output_dir``.

    A full disk stops the run: the file being written and every one not yet attempted are
    reported as failed with that reason (the outputs already written are complete: every
    write is atomic).

    Args:
        predictor: the model (with its TTA/tiling settings).
        inputs: files and/or folders (see :func:`collect_inputs` for the output paths).
        output_dir: destination folder (created when missing).
        slice_index: slice of 3D NIfTI / multi-frame DICOM / multi-page TIFF inputs.
        progress: show a progress bar.
        overwrite: replace outputs that already exist (never an input file).

    Returns:
        The summary (outputs written, failures with reasons, skipped outputs, wall time).

    Raises:
        ValueError: see :func:`collect_inputs`, or an output folder that cannot be written
            (:func:`check_output_folder`); nothing is predicted then.
    """
    start = time.perf_counter()
    pairs = collect_inputs(inputs, output_dir)
    out = check_output_folder(output_dir)
    summary = PredictSummary(ok=[], failed=[], seconds=0.0, output_dir=out)
    with Progress(
        len(pairs), desc="predict", unit="image", enabled=progress, redirect_logging=True
    ) as bar:
        for number, (src, dest) in enumerate(bar.iterate(pairs)):
            if dest.exists() and not overwrite:
                log.info("%s exists, skipped (pass overwrite to replace it)", dest)
                summary.skipped.append(dest)
                continue
            try:
                if not src.is_file():
                    raise ImageIOError(src, _missing_reason(src))
                array, meta = read_image(src, slice_index=slice_index)
                prediction = predictor(array, stored_dtype=meta.stored_dtype, source=str(src))
                write_image(dest, prediction, meta)
            except Exception as exc:  # a bad file must not stop the others
                if _disk_full(exc):
                    reason = f"no space left on device while writing {dest}"
                    log.error("%s: %s; stopping", src, reason)
                    summary.failed.append((src, reason))
                    summary.failed.extend(
                        (rest, "not attempted: the output disk is full")
                        for rest, _ in pairs[number + 1 :]
                    )
                    break
                reason = _reason(exc)
                log.error("%s: failed: %s", src, reason)
                log.debug("%s: traceback", src, exc_info=True)
                summary.failed.append((src, reason))
                continue
            summary.ok.append(dest)
    summary.seconds = time.perf_counter() - start
    (log.warning if summary.failed else log.info)(summary.line())
    return summary
