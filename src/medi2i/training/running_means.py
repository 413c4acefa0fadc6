"""Running means of per-step scalars without host syncs (:class:`RunningMeans`).

The trainer adds each step's detached losses and diagnostics (0-dim tensors) and reads the means
at logging time and at the end of the epoch.

Rules: :meth:`RunningMeans.add` never reads a tensor on the host (no ``.item()``, no
``float(tensor)``), so the step loop never waits for the accelerator; :meth:`RunningMeans.means`
reads all tensor sums of one device with a single host transfer.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["RunningMeans"]


class RunningMeans:
    """Accumulate scalars per key (sum + count) on their device, without host syncs.

    ``add`` only launches device-side additions (no ``.item()``, no ``float(tensor)``), so calling
    it every step keeps the step loop asynchronous. Keys may appear in some steps only: each key
    has its own count. Tensor sums are kept in float32 on the tensor's device; Python numbers are
    summed on the host.

    Example::

        means = RunningMeans()
        for batch in loader:
            ...
            means.add(parts)                 # dict of 0-dim tensors
            if step % log_every == 0:
                logger_.log_step(step, epoch, means.means())
                means.reset()
    """

    def __init__(self) -> None:
        self._sums: dict[str, Tensor | float] = {}
        self._counts: dict[str, int] = {}

    def add(self, values: Mapping[str, Tensor | float]) -> None:
        """Add one observation per key.

        Args:
            values: key -> one-element tensor (any device/dtype; detached here) or Python number.

        Raises:
            ValueError: if a tensor has more than one element (checked from its shape only).
            TypeError: if a value is neither a tensor nor a real number.
        """
        for key, value in values.items():
            if isinstance(value, Tensor):
                if value.numel() != 1:
                    raise ValueError(
                        f"RunningMeans.add: {key!r} must be a one-element tensor, "
                        f"got shape {tuple(value.shape)}"
                    )
                term: Tensor | float = value.detach().reshape(()).to(torch.float32)
            elif isinstance(value, numbers.Real):
                term = float(value)
            else:
                raise TypeError(
                    f"RunningMeans.add: {key!r} must be a tensor or a number, "
                    f"got {type(value).__name__}"
                )
            previous = self._sums.get(key)
            # Out-of-place sums: never alias (and later modify) a caller's tensor.
            self._sums[key] = term if previous is None else previous + term
            self._counts[key] = self._counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        """Return the mean of every key seen since the last :meth:`reset`.

        All tensor sums on one device are stacked and read with a single ``.tolist()``: one host
        transfer per device (normally one in all).

        Returns:
            ``{key: mean}`` in first-seen order (non-finite means stay ``nan`` / ``inf``).
        """
        result: dict[str, float] = {}
        by_device: dict[torch.device, list[str]] = {}
        for key, total in self._sums.items():
            if isinstance(total, Tensor):
                by_device.setdefault(total.device, []).append(key)
            else:
                result[key] = total / self._counts[key]
        for keys in by_device.values():
            sums = torch.stack([self._sums[k] for k in keys]).tolist()  # type: ignore[misc]
            for key, total in zip(keys, sums):
                result[key] = total / self._counts[key]
        return {key: result[key] for key in self._sums}

    def counts(self) -> dict[str, int]:
        """Return how many values each key has received since the last :meth:`reset`."""
        return dict(self._counts)

    def reset(self) -> None:
        """Forget every key."""
        self._sums.clear()
        self._counts.clear()

    def __len__(self) -> int:
        return len(self._sums)

    def __contains__(self, key: object) -> bool:
        return key in self._sums

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._counts})"
