"""Reading and writing single-channel 2D medical images: DICOM, NIfTI, PNG, TIFF and NPY.

Every reader returns the image as a 2D ``float32`` array plus an :class:`ImageMeta` that holds
what :func:`write_image` needs to write a result back "like the input" (same format, stored
dtype, geometry and metadata). Files are read with the field's libraries: pydicom, nibabel,
Pillow, tifffile and numpy. MONAI's ``LoadImage`` is deliberately not used because its PIL and
pydicom readers return (W, H) arrays by default.

Conventions (pinned by ``tests/test_io.py``):

* **Array order.** ``array[r, c]`` is row ``r``, column ``c`` of the pixel array exactly as the
  library returns it: Pillow / tifffile / pydicom ``pixel_array`` give (rows, cols) with row 0
  at the top of the image; NPY is used as stored. NIfTI keeps nibabel's array order (axis 0 = i,
  axis 1 = j) with no reorientation, so a read/write round trip is exact; for a 3D volume the
  slice is ``volume[:, :, slice_index]`` (the last axis).
* **Units.** Values are physical/stored units, never normalised: PNG/TIFF/NPY as stored (a 16-bit
  PNG reads 0..65535); DICOM after the modality transform (RescaleSlope/RescaleIntercept, or the
  Modality LUT Sequence), i.e. HU for CT; NIfTI with the header's ``scl_slope``/``scl_inter``
  applied by nibabel.
* **MONOCHROME1** DICOM (higher stored value = darker) is inverted on read so that higher always
  means brighter/denser: ``value = (y_min + y_max) - modality(stored)``, where
  ``[y_min, y_max]`` is the modality output range of the stored range given by BitsStored and
  PixelRepresentation (pydicom's convention for windowing). For a linear rescale this equals
  rescaling ``(s_min + s_max) - stored``. The map is its own inverse; :func:`write_image` applies
  it again, so the PhotometricInterpretation of the written file stays MONOCHROME1 and the
  stored values round-trip bit for bit.
* **Writing.** :func:`write_image` takes values in the units that :func:`read_image` returned,
  rounds to nearest (``numpy.rint``, half to even) and clips to the stored dtype's range for
  integer formats (a warning reports the clipped fraction); float formats stay float. All writes
  are atomic (:func:`medi2i.utils.atomic.atomic_path`) and never replace the input file.
* **NIfTI slices.** A slice taken from a 3D volume with ``slice_index=k`` is written as a
  single-slice 3D image ``(I, J, 1)`` whose affine is shifted to the slice's position
  (``affine @ [0, 0, k, 1]`` becomes the new origin), so world coordinates of every voxel are
  unchanged and the slice thickness (pixdim[3]) keeps its meaning. A 2D source is written 2D;
  a 3D source with one singleton axis is written with the same 3D shape. If the source had
  ``scl_slope``/``scl_inter`` scaling, the result is written as float32 with slope 1 and
  intercept 0 (exact, no re-quantisation); otherwise the source data dtype is kept.
* **DICOM writing.** The source's metadata are copied; the pixel data are converted back to
  stored values and written uncompressed (Explicit VR Little Endian) whatever the source
  transfer syntax, with ImageType DERIVED\\SECONDARY, new SOP Instance and Series Instance UIDs,
  a SourceImageSequence pointing at the source instance, SeriesDescription suffixed with
  " medi2i" and a DerivationDescription.

Layout: :mod:`~medi2i.data.io.common` (``ImageIOError``, ``ImageMeta`` and the shared checks,
rounding/clipping and dtype helpers), :mod:`~medi2i.data.io.dicom`,
:mod:`~medi2i.data.io.nifti`, :mod:`~medi2i.data.io.raster` (PNG, TIFF, NPY) and
:mod:`~medi2i.data.io.dispatch` (format detection, ``read_image``, ``write_image``). Import the
public names from ``medi2i.data.io``; the submodules are implementation details.
"""

from __future__ import annotations

from medi2i.data.io.common import ImageIOError, ImageMeta
from medi2i.data.io.dispatch import (
    SUPPORTED_SUFFIXES,
    detect_format,
    is_image_file,
    read_image,
    write_image,
)
from medi2i.data.io.raster import read_png, write_png

__all__ = [
    "SUPPORTED_SUFFIXES",
    "ImageIOError",
    "ImageMeta",
    "detect_format",
    "is_image_file",
    "read_image",
    "read_png",
    "write_image",
    "write_png",
]
