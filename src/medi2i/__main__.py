"""``python -m medi2i`` (also what ``torchrun -m medi2i`` runs)."""

from medi2i.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
